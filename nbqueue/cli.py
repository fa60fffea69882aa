"""The ``nbqueue`` command: ``demo``, ``worker STORE``, ``status STORE``,
``result STORE ID``. STORE is a store directory or a Redis URL (``--queue``
names the queue there; ``$NBQUEUE_SECRET`` is the secret)."""

import argparse
import importlib
import os
import sys

from . import registry
from .exceptions import NbqueueError
from .queue import Queue
from .storage.redisconn import is_redis_url
from .validation import WORKER_TYPES, check_count, check_seconds

DEFAULT_WORKERS = 4
QUEUE_HELP = "the queue's name on a redis:// store (default: default)"


def load_queue(target, queue_name=None, **settings):
    """The Queue a ``nbqueue worker`` argument names: a store directory, a Redis
    URL (with ``queue_name``, default "default"), or ``module:variable``
    (imported without starting its workers). ``settings`` (lease,
    max_recoveries) are the queue's for a store directory or URL. Raises
    NbqueueError / ValueError saying what is wrong."""
    if is_redis_url(target):
        return Queue(queue_name or "default", storage=target, workers=0, start=False, **settings)
    if queue_name is not None:
        raise ValueError(f"--queue {queue_name}: only a redis:// store holds several queues; "
                         "a store directory or module:variable names its queue already")
    if _is_module_ref(target):
        module_name, _, attr = target.partition(":")
        sys.path.insert(0, os.getcwd())
        saved, registry.autostart = registry.autostart, False
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise NbqueueError(f"{target}: cannot import {module_name!r} ({err}); run the "
                               f"command where it can be imported (searched {os.getcwd()!r} "
                               "and the installed packages)") from None
        finally:
            registry.autostart = saved
        q = getattr(module, attr, None)
        if not isinstance(q, Queue):
            raise ValueError(f"{target}: {module_name}.{attr} is "
                             f"{'missing' if q is None else type(q).__name__}, not an nbqueue Queue")
        return q
    return _queue(target, **settings)


def _is_module_ref(target):
    return ":" in target and not os.path.isdir(target) and not is_redis_url(target)


def _where(q):
    directory = getattr(q.store, "directory", None)
    return directory if directory else repr(q.store)


def _settings_of(q):
    state = q.state
    return {"lease": state.lease, "max_recoveries": state.max_recoveries,
            "output_limit": state.output_limit, "keep": state.keep,
            "max_finished": state.max_finished}


def _queue(store, queue_name=None, **settings):
    if is_redis_url(store):
        return load_queue(store, queue_name, **settings)
    from .storage.sqlite import queue_name_of
    return Queue(queue_name_of(store), storage=store, workers=0, start=False, **settings)


def cmd_demo(args):
    from .demo import main
    main(storage=args.store)
    return 0


def cmd_worker(args):
    import logging

    from .runner import run_worker
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.workers is not None:
        check_count(args.workers, "-w", minimum=1, hint="(workers)")
    if args.max_tasks is not None:
        check_count(args.max_tasks, "--max-tasks", minimum=1, hint="(or leave it out)")
    # This process runs tasks only through run_worker: a module a task imports must not
    # start the workers of a Queue it defines.
    registry.autostart = False
    settings = {}
    if args.lease is not None:
        settings["lease"] = check_seconds(args.lease, "--lease", minimum=0.1, maximum=86400.0)
    if args.max_recoveries is not None:
        settings["max_recoveries"] = check_count(args.max_recoveries, "--max-recoveries")
    q = load_queue(args.store, args.queue, **settings)
    if settings and _is_module_ref(args.store):
        q.state.configure(**{**_settings_of(q), **settings})
    if not q.store.shared:
        raise ValueError(f"{args.store}: queue {q.name!r} is on a memory store, which no other "
                         "process can reach; give it a store directory")
    # module:queue: its own workers and worker_type unless -w/-k say otherwise
    workers = args.workers or (q.workers if q.workers else None) or DEFAULT_WORKERS
    kind = args.kind or q.worker_type
    return run_worker(q, workers, kind, args.max_tasks, args.sidecar)


def cmd_status(args):
    q = _queue(args.store, args.queue)
    counts = q.counts()
    print(f"queue {q.name!r} at {_where(q)}: "
          + (", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no tasks"))
    for rec in q.store.page(limit=args.limit):
        print(f"  {rec.id}  {rec.status:<10} attempts={rec.attempts}  {rec.name}")
    return 0


def cmd_result(args):
    from .exceptions import TaskCancelled, TaskException
    q = _queue(args.store, args.queue)
    r = q.result(args.task_id)
    try:
        value = r.get(timeout=args.timeout, block=args.wait)
    except TaskException as exc:
        print(f"failed: {exc}\n{exc.traceback}", file=sys.stderr)
        return 1
    except TaskCancelled as exc:
        print(f"cancelled: {exc}", file=sys.stderr)
        return 1
    except TimeoutError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if not r.done():
        print(f"{r.id} is {r.status}; pass --wait to wait for it", file=sys.stderr)
        return 2
    print(repr(value))
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="nbqueue", description="Background tasks for notebooks.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="a terminal demo on the default durable store")
    p.add_argument("--store", default=None, help="store directory (default ./.nbqueue/demo)")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("worker", help="run a queue's tasks and periodic jobs")
    p.add_argument("store", help="a queue's store directory (like .nbqueue/default), a "
                                 "Redis URL (redis://host:6379/0, with --queue and "
                                 "$NBQUEUE_SECRET), or module:variable naming a Queue in an "
                                 "importable module")
    p.add_argument("-q", "--queue", default=None, help=QUEUE_HELP)
    p.add_argument("-w", "--workers", type=int, default=None,
                   help=f"workers (default: the module's Queue's, else {DEFAULT_WORKERS})")
    p.add_argument("-k", "--kind", choices=WORKER_TYPES, default=None,
                   help="thread: threads of this process; process: each worker runs its "
                        "tasks in a child process (hard timeouts, cancel of any task); "
                        "default: the module's Queue's worker_type, else thread")
    p.add_argument("--max-tasks", type=int, default=None,
                   help="exit after running this many tasks")
    p.add_argument("--lease", type=float, default=None,
                   help="seconds a claim is held without renewal before a dead worker's task "
                        "runs again (default: the queue's, 10)")
    p.add_argument("--max-recoveries", type=int, default=None,
                   help="times a task whose worker died is run again (default: the queue's, 1)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--sidecar", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_worker)
    p = sub.add_parser("status", help="list the tasks of a store")
    p.add_argument("store", help="a queue's store directory, like .nbqueue/default, or a Redis URL")
    p.add_argument("-q", "--queue", default=None, help=QUEUE_HELP)
    p.add_argument("--limit", type=int, default=50, help="show the newest N tasks (default 50)")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("result", help="print a task's result by id")
    p.add_argument("store", help="a queue's store directory, or a Redis URL")
    p.add_argument("task_id")
    p.add_argument("-q", "--queue", default=None, help=QUEUE_HELP)
    p.add_argument("--wait", action="store_true", help="wait for the task to finish")
    p.add_argument("--timeout", type=float, default=None)
    p.set_defaults(func=cmd_result)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (NbqueueError, ValueError, ImportError) as exc:
        print(f"nbqueue: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The ``nbqueue`` command: ``demo``, ``worker STORE``, ``status STORE``,
``result STORE ID``."""

import argparse
import importlib
import os
import sys

from . import registry
from .queue import Queue


def load_queue(target):
    """The Queue a ``nbqueue worker`` argument names: a store directory, or
    ``module:variable`` (imported without starting its workers). Raises
    NbqueueError / ValueError saying what is wrong."""
    if ":" in target and not os.path.isdir(target):
        module_name, _, attr = target.partition(":")
        sys.path.insert(0, os.getcwd())
        registry.autostart = False
        try:
            module = importlib.import_module(module_name)
        finally:
            registry.autostart = True
        q = getattr(module, attr, None)
        if not isinstance(q, Queue):
            raise ValueError(f"{target}: {module_name}.{attr} is "
                             f"{'missing' if q is None else type(q).__name__}, not an nbqueue Queue")
        return q
    return _queue(target)


def _queue(store):
    from .storage.sqlite import queue_name_of
    return Queue(queue_name_of(store), storage=store, workers=0, start=False)


def cmd_demo(args):
    from .demo import main
    main(storage=args.store)
    return 0


def cmd_worker(args):
    import logging

    from .runner import run_worker
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.workers < 1:
        raise ValueError(f"-w {args.workers}: give at least 1 worker")
    if args.max_tasks is not None and args.max_tasks < 1:
        raise ValueError(f"--max-tasks {args.max_tasks}: give at least 1, or leave it out")
    q = load_queue(args.store)
    if not q.store.shared:
        raise ValueError(f"{args.store}: queue {q.name!r} is on a memory store, which no other "
                         "process can reach; give it a store directory")
    return run_worker(q, args.workers, args.kind, args.max_tasks, args.sidecar)


def cmd_status(args):
    q = _queue(args.store)
    counts = q.counts()
    print(f"queue {q.name!r} at {q.store.directory}: "
          + (", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no tasks"))
    for rec in q.store.page(limit=args.limit):
        print(f"  {rec.id}  {rec.status:<10} attempts={rec.attempts}  {rec.name}")
    return 0


def cmd_result(args):
    from .exceptions import TaskCancelled, TaskException
    q = _queue(args.store)
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
    p.add_argument("store", help="a queue's store directory (like .nbqueue/default), or "
                                 "module:variable naming a Queue in an importable module")
    p.add_argument("-w", "--workers", type=int, default=4, help="workers (default 4)")
    p.add_argument("-k", "--kind", choices=("thread", "process"), default="thread",
                   help="thread: threads of this process; process: each worker runs its "
                        "tasks in a child process (hard timeouts, cancel of any task)")
    p.add_argument("--max-tasks", type=int, default=None,
                   help="exit after running this many tasks")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--sidecar", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_worker)
    p = sub.add_parser("status", help="list the tasks of a store")
    p.add_argument("store", help="a queue's store directory, like .nbqueue/default")
    p.add_argument("--limit", type=int, default=50, help="show the newest N tasks (default 50)")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("result", help="print a task's result by id")
    p.add_argument("store")
    p.add_argument("task_id")
    p.add_argument("--wait", action="store_true", help="wait for the task to finish")
    p.add_argument("--timeout", type=float, default=None)
    p.set_defaults(func=cmd_result)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from .exceptions import NbqueueError
    try:
        return args.func(args)
    except (NbqueueError, ValueError) as exc:
        print(f"nbqueue: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

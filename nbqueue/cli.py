"""The ``nbqueue`` command: ``demo``, ``status STORE``, ``result STORE ID``."""

import argparse
import sys


def _queue(store):
    from .queue import Queue
    from .storage.sqlite import queue_name_of
    return Queue(queue_name_of(store), storage=store, workers=0, start=False)


def cmd_demo(args):
    from .demo import main
    main(storage=args.store)
    return 0


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

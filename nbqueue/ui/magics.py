"""IPython magics: ``%%background`` runs a cell in a worker; ``%nbqueue`` looks after a queue.

Load with ``%load_ext nbqueue``. Argument errors raise ``UsageError`` (one
line, no traceback); the magics never take the kernel down.
"""

import ast
import threading

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

from .. import registry
from ..exceptions import NbqueueError, TaskNotFound
from ..cellrun import cell_names, compile_cell, pack_inputs, run_compiled, run_shipped_cell
from ..queue import Queue
from ..states import UNFINISHED
from ..task import TaskFunction, make_options

_background = {}  # "thread" / "process" / "sidecar" -> the default queue of that kind
_background_lock = threading.Lock()
_cell_counter = iter(range(1, 1 << 62))


# the default queues of the magics: made once per kernel, again after a shutdown
_DEFAULTS = {
    "thread": lambda: Queue("background", storage="memory"),
    "process": lambda: Queue("background-process", storage="memory", workers=2,
                             worker_type="process"),
    "sidecar": lambda: Queue("background", workers=0),  # ./.nbqueue/background
}


def background_queue(kind="thread"):
    """The kernel's default queue of ``kind`` for ``%%background``: "thread" and
    "process" are in memory (the latter's two workers run cells in processes),
    "sidecar" only submits to ``./.nbqueue/background``. Making one leaves
    ``%nbqueue`` meaning the user's own latest queue."""
    with _background_lock:
        q = _background.get(kind)
        if q is None or (q._closed and q._successor is None):
            try:
                previous = registry.latest_queue()
            except NbqueueError:
                previous = None
            q = _background[kind] = _DEFAULTS[kind]()
            if previous is not None:
                registry.set_latest(previous)
        return q._live_queue()


def sidecar_queue(shell, name):
    """The disk queue a ``--sidecar`` cell goes to (``-q VAR``, else the store
    ``./.nbqueue/background``), with its sidecar started if none runs."""
    q = _queue_from(shell, name) if name is not None else background_queue("sidecar")
    if not q.store.shared:
        raise UsageError(f"--sidecar: queue {q.name!r} is on a memory store, which a sidecar cannot "
                         "reach; give -q a queue on a store directory")
    try:
        q.start_sidecar()
    except (NbqueueError, OSError) as err:
        raise UsageError(f"--sidecar: the sidecar could not start: {err}") from None
    return q


def run_cell(code, filename):
    """Run a ``%%background`` cell in the kernel's namespace; returns its last expression.

    Module-level (not a closure over the shell) so that its payload pickles;
    it needs the kernel it was submitted from, so it only runs in-kernel.
    """
    from IPython import get_ipython
    shell = get_ipython()
    if shell is None:
        raise RuntimeError("a %%background cell runs in the kernel's namespace; run it on an "
                           "in-kernel queue, not in a sidecar or another process")
    return run_compiled(*compile_cell(code, filename), shell.user_ns)


def _unquote(value):
    # magic_arguments keeps the quotes of -n 'csv import': drop one matching pair
    if value and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _queue_from(shell, name):
    if name is None:
        try:
            q = registry.latest_queue()
        except NbqueueError:
            raise UsageError("no nbqueue Queue yet: create one (q = nbqueue.Queue()) "
                             "or name one with -q VAR") from None
        try:
            return q._live_queue()
        except NbqueueError as err:
            raise UsageError(f"the latest queue, {q.name!r}, is shut down ({err}); create a new "
                             "one or name another with -q VAR") from None
    q = shell.user_ns.get(_unquote(name))
    if not isinstance(q, Queue):
        raise UsageError(f"-q {name}: no Queue named {name!r} in the namespace "
                         f"(got {type(q).__name__}); pass the variable that holds your Queue")
    return q._live_queue()


@magics_class
class NbqueueMagics(Magics):

    @magic_arguments()
    @argument("-n", "--name", default="background", help="task name (default: background)")
    @argument("-q", "--queue", default=None,
              help="variable holding the Queue to use (default: an in-memory queue of this kernel)")
    @argument("--retries", type=int, default=0, help="retries on error")
    @argument("--timeout", type=float, default=None, help="seconds before TaskTimeout")
    @argument("-k", "--kind", default="thread",
              help="thread (default: in the kernel, on its namespace) or process (in a process "
                   "of its own: the names it reads are sent there, those it assigns come back)")
    @argument("--sidecar", action="store_true",
              help="run it in the store's sidecar (started if none runs), like -k process")
    @argument("-o", "--output", default=None, help="variable to store the Result in (always also _bg)")
    @cell_magic
    def background(self, line, cell):
        """Run this cell in a worker thread; the notebook stays free.

        The cell runs against the notebook's namespace (names it assigns appear
        there), its last expression is the task's result, and the Result is
        stored in ``_bg`` (and in the ``-o`` variable) and shown as a live
        widget under the cell. Its prints go to that widget's log.
        """
        args = parse_argstring(self.background, line)
        args.name, args.output = _unquote(args.name), _unquote(args.output)
        if args.retries < 0:
            raise UsageError(f"--retries {args.retries}: give a whole number >= 0")
        if args.timeout is not None and args.timeout <= 0:
            raise UsageError(f"--timeout {args.timeout}: give a number of seconds > 0")
        if args.output is not None and not args.output.isidentifier():
            raise UsageError(f"-o {args.output}: give a variable name, like -o result")
        if not cell.strip():
            raise UsageError("%%background needs some code in the cell below it")
        kind = _unquote(args.kind)
        if kind not in ("thread", "process"):
            raise UsageError(f"-k {kind}: use -k thread (the default) or -k process")
        code = self.shell.transform_cell(cell)
        try:
            ast.parse(code)
        except SyntaxError as err:
            raise UsageError(f"the cell has a syntax error, nothing was started: {err}") from None
        filename = f"<background cell {next(_cell_counter)}>"
        try:  # NaN, inf and the like: a usage error too, not a traceback
            options = make_options(retries=args.retries, timeout=args.timeout)
        except (TypeError, ValueError) as err:
            raise UsageError(f"%%background: {err}") from None
        if kind == "thread" and not args.sidecar:
            q = _queue_from(self.shell, args.queue) if args.queue else background_queue()
            result = TaskFunction(q, run_cell, args.name, options)(code, filename)
        else:
            result = self._ship_cell(args, code, filename, options)
        self.shell.user_ns["_bg"] = result
        if args.output:
            self.shell.user_ns[args.output] = result
        display(result)

    def _ship_cell(self, args, code, filename, options):
        """Submit the cell to run in another process: what it reads goes by value,
        what it assigns comes back into the namespace when it succeeds."""
        reads, writes = cell_names(code)
        try:
            inputs = pack_inputs(self.shell.user_ns, reads, writes)
        except TypeError as err:
            raise UsageError(f"%%background -k process: {err}") from None
        if args.sidecar:
            q = sidecar_queue(self.shell, args.queue)
        elif args.queue:
            q = _queue_from(self.shell, args.queue)
            if q.worker_type != "process" and q.sidecar_status() is None:
                raise UsageError(f"-k process -q {args.queue}: that queue runs tasks in threads; "
                                 "give a Queue(..., worker_type='process'), use --sidecar, or "
                                 "leave -q out (a process queue of this kernel)")
        else:
            q = background_queue("process")
        result = TaskFunction(q, run_shipped_cell, args.name, options)(code, filename, inputs, writes)
        user_ns = self.shell.user_ns

        def bring_back(r):
            names = r.queue.state.shipped_names(r.id)
            user_ns.update(names)

        result.add_done_callback(bring_back)
        return result

    @magic_arguments()
    @argument("-q", "--queue", default=None,
              help="variable holding the Queue (default: the most recently created one)")
    @argument("command", nargs="?", default=None,
              help="list | status | cancel ID | result ID | output ID | wait [ID] | purge | workers N "
                   "(none: the dashboard)")
    @argument("args", nargs="*", help="the command's argument")
    @line_magic
    def nbqueue(self, line):
        """Look after a queue: the dashboard, or a command.

        %nbqueue                  live dashboard
        %nbqueue list             the newest tasks, one line each
        %nbqueue status           counts by state, workers, periodic jobs
        %nbqueue cancel ID        cancel a task (an id prefix is enough)
        %nbqueue result ID        the task's value (raises what get() raises)
        %nbqueue output ID        the task's captured stdout/stderr
        %nbqueue wait [ID]        wait for a task, or for every unfinished one
        %nbqueue purge            delete finished tasks' records
        %nbqueue workers N        resize the worker pool
        """
        try:
            args = parse_argstring(self.nbqueue, line)
        except ValueError as err:  # unbalanced quotes and the like
            raise UsageError(str(err)) from None
        q = _queue_from(self.shell, args.queue)
        command, rest = args.command, args.args
        if command not in COMMANDS:
            raise UsageError(f"unknown command {command!r}; use one of: "
                             + ", ".join(c for c in COMMANDS if c) + " (see %nbqueue?)")
        handler, usage = COMMANDS[command]
        low = sum(1 for word in usage.split() if not word.startswith("["))
        high = len(usage.split())
        if not low <= len(rest) <= high:
            raise UsageError(f"usage: %nbqueue {command} {usage}".rstrip())
        return handler(q, *rest)


# ---- the %nbqueue subcommands: (handler(queue, *args), usage) by name ----------
def _dashboard(q):
    return q.dashboard()


def _list(q):
    print(q.dashboard().text(limit=50))


def _status(q):
    counts = q.counts()
    print(f"queue {q.name!r} on {q.store!r}: {q.workers} workers; "
          + (", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no tasks"))
    for job in q.periodic_jobs():
        print(f"  {job!r}")


def _workers(q, n):
    try:
        q.workers = int(n)
    except ValueError:
        raise UsageError(f"%nbqueue workers {n}: give a whole number >= 0") from None
    print(f"queue {q.name!r}: {q.workers} workers")


def _purge(q):
    print(f"purged {q.purge()} finished tasks")


def _wait(q, task_id=None):
    results = [_find(q, task_id)] if task_id else q.tasks(status=UNFINISHED)
    for r in results:
        r.wait()
    from .widgets import settle
    settle()  # the displays above show the end state when this cell ends
    print(f"{len(results)} task(s) finished")


def _cancel(q, task_id):
    r = _find(q, task_id)
    ok = r.cancel()
    print(f"{r.id}: " + ("cancel asked" if ok else f"already {r.status}"))


def _output(q, task_id):
    print(_find(q, task_id).output, end="")


def _result(q, task_id):
    r = _find(q, task_id)
    if not r.done():
        print(f"{r.id} is {r.status}; %nbqueue wait {r.id[:8]} waits for it")
        return None
    return r.get()


COMMANDS = {
    None: (_dashboard, ""), "list": (_list, ""), "status": (_status, ""),
    "cancel": (_cancel, "ID"), "result": (_result, "ID"), "output": (_output, "ID"),
    "wait": (_wait, "[ID]"), "purge": (_purge, ""), "workers": (_workers, "N"),
}


def _find(q, prefix):
    """The task whose id is ``prefix`` or starts with it (ids are long; 8 characters
    usually do). Raises UsageError if none or several match."""
    try:
        return q.result(prefix)
    except TaskNotFound:
        pass
    matches = q.store.find_prefix(prefix.lower(), limit=2)
    if len(matches) == 1:
        return q.result(matches[0])
    if not matches:
        raise UsageError(f"no task {prefix!r} in queue {q.name!r}; %nbqueue list shows the ids")
    raise UsageError(f"several tasks start with {prefix!r}; give more of the id")


def load_ipython_extension(ipython):
    """``%load_ext nbqueue``."""
    ipython.register_magics(NbqueueMagics)


__all__ = ["NbqueueMagics", "load_ipython_extension", "background_queue"]

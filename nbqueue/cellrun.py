"""A ``%%background -k process`` (or ``--sidecar``) cell, run in another process.

The cell cannot see the notebook's namespace there, so ``cell_names`` finds
the names it reads (shipped by value: pickled one by one, so the one that
cannot be is named) and the names it assigns (sent back when it ends, and put
into the notebook's namespace). ``run_shipped_cell`` is the task: importable
without IPython, so a process worker or a sidecar runs it.
"""

import ast
import builtins
import inspect
import linecache
import symtable

from . import serializer


class ShippedCell:
    """What a shipped cell returns: the value of its last expression and the
    names it assigned, each pickled on its own (``value``: bytes; ``names``:
    ``{name: bytes}``), so the one that cannot be is named. ``Result.get``
    gives ``load_value()``."""

    __slots__ = ("value", "names")

    def __init__(self, value, names):
        self.value, self.names = value, names

    def __reduce__(self):
        return (ShippedCell, (self.value, self.names))

    def load_value(self):
        return serializer.loads(self.value)


def cell_names(code):
    """``(reads, writes)``: the global names the cell (functions it defines
    included) reads, and the names it binds at its top level. Raises SyntaxError."""
    top = symtable.symtable(code, "<cell>", "exec")
    reads, writes = set(), set()
    for sym in top.get_symbols():
        if sym.is_referenced():
            reads.add(sym.get_name())
        if sym.is_assigned() or sym.is_imported() or sym.is_namespace():
            writes.add(sym.get_name())
    stack = list(top.get_children())
    while stack:  # globals read inside functions and classes the cell defines
        table = stack.pop()
        stack.extend(table.get_children())
        for sym in table.get_symbols():
            if sym.is_global() and sym.is_referenced():
                reads.add(sym.get_name())
    return reads - set(dir(builtins)) - {"__builtins__"}, writes


def run_shipped_cell(code, filename, inputs, writes):
    """Run a cell in this process on the ``inputs`` it reads (``{name: pickled
    value}``); return a ShippedCell with the value of its last expression and
    the ``writes`` it bound. Raises what the cell raises, or TypeError naming a
    name it bound that cannot be pickled back."""
    ns = {"__name__": "__main__", "__builtins__": builtins}
    for name, blob in inputs.items():
        ns[name] = serializer.loads(blob)
    body, last = compile_cell(code, filename)
    return run_compiled(body, last, ns, lambda value: ShippedCell(_pickle_value(value),
                                                                  _send_back(ns, writes)))


def _pickle_value(value):
    try:
        return serializer.dumps(value)
    except Exception as err:
        raise TypeError(
            f"the cell's last expression is a {type(value).__name__}, which cannot be pickled "
            f"back to the notebook ({type(err).__name__}: {err}); end the cell with a statement "
            "(or `None`) or with plain data") from err


def compile_cell(code, filename):
    """``(body, last)``: a cell's statements and its last expression (None if it
    ends with a statement), compiled with top-level ``await`` allowed; the source
    is registered in ``linecache`` so tracebacks show its lines. Raises SyntaxError."""
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    tree = ast.parse(code, filename)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = compile(ast.Expression(tree.body.pop().value), filename, "eval", flags=flags)
    return compile(tree, filename, "exec", flags=flags), last


def run_compiled(body, last, ns, then=None):
    """Run a compiled cell in ``ns``; return ``then(value of its last expression)``
    (the value itself without ``then``). A cell with top-level ``await`` returns a
    coroutine instead, which the worker runs on its event loop."""
    then = then or (lambda value: value)
    if inspect.CO_COROUTINE & (body.co_flags | (last.co_flags if last else 0)):
        async def run_async():
            done = eval(body, ns)
            if inspect.isawaitable(done):
                await done
            value = eval(last, ns) if last else None
            return then((await value) if inspect.isawaitable(value) else value)
        return run_async()
    exec(body, ns)
    return then(eval(last, ns) if last else None)


def _send_back(ns, writes):
    names = {}
    for name in sorted(writes):
        if name not in ns:
            continue  # bound on a path the cell did not take, or deleted
        try:
            names[name] = serializer.dumps(ns[name])
        except Exception as err:
            raise TypeError(
                f"the cell assigned {name!r} (a {type(ns[name]).__name__}), which cannot be "
                f"pickled back to the notebook ({type(err).__name__}: {err}); delete it at the "
                "end of the cell (del " + name + ") or keep it out of the cell") from err
    return names


def pack_inputs(ns, reads, writes):
    """``{name: pickled value}`` of the names the cell reads that the namespace
    holds. A name that cannot be pickled raises TypeError naming it, unless the
    cell binds it itself (then it is left out: the cell makes its own)."""
    inputs = {}
    for name in sorted(reads):
        if name not in ns or name in ("_", "__", "___", "_bg"):  # IPython's outputs, our Result
            continue
        value = ns[name]
        try:
            serializer.refuse(value, f"the notebook variable {name!r} that the cell reads",
                              hint="; or run the cell without -k process")
        except TypeError:
            if name in writes:
                continue
            raise
        try:
            inputs[name] = serializer.dumps(value)
        except Exception as err:
            if name in writes:
                continue
            raise TypeError(f"the cell reads {name!r} (a {type(value).__name__}), which cannot be "
                            f"pickled to another process ({type(err).__name__}: {err}); make it "
                            "inside the cell, or run the cell without -k process") from err
    return inputs

"""The one place that turns calls, values and exceptions into bytes and back.

cloudpickle ships functions defined in ``__main__`` (a notebook) by value, so
another process runs them without importing the notebook; functions from
importable modules travel by reference.
"""

import io
import pickle
import socket
import sys
import threading
import traceback as tb
import types

import cloudpickle

from .exceptions import PayloadRejected
from .signing import ENV, MAGIC, Rejected

PROTOCOL = pickle.HIGHEST_PROTOCOL


def dumps(obj):
    return cloudpickle.dumps(obj, protocol=PROTOCOL)


def loads(data):
    """Unpickle ``data``. Raises PayloadRejected, unpickling nothing, for a blob
    whose signature failed (``signing.Rejected``) or a signed blob read by a
    process that has no secret."""
    if data.__class__ is Rejected:
        raise PayloadRejected(data.reason)
    if data[:len(MAGIC)] == MAGIC:
        raise PayloadRejected("this value is signed, but this process has no secret to check it: "
                              f"give the Queue secret= or set ${ENV}")
    return pickle.loads(data)


def _explain(err):
    return f"{type(err).__name__}: {err}"


def encode_call(name, func, args, kwargs, retry_on, hint=None):
    """Pickle a call. Raises TypeError naming the argument that cannot be pickled,
    or that is an open file, socket, lock, generator or thread (``refuse``),
    before pickling anything. ``hint``: the way out the message ends with
    (default ``MEMORY_HINT``)."""
    hint = MEMORY_HINT if hint is None else hint
    for i, arg in enumerate(args):
        refuse(arg, f"argument {i} ({type(arg).__name__}) of {name}()", hint)
    for key, arg in kwargs.items():
        refuse(arg, f"keyword argument {key!r} ({type(arg).__name__}) of {name}()", hint)
    try:
        return dumps((func, args, kwargs, retry_on))
    except Exception as err:
        whole = err
    for i, arg in enumerate(args):
        _check(arg, f"argument {i} ({type(arg).__name__}) of {name}()", hint)
    for key, arg in kwargs.items():
        _check(arg, f"keyword argument {key!r} ({type(arg).__name__}) of {name}()", hint)
    _check(func, f"the function {name}", hint)
    raise TypeError(f"the call {name}() cannot be pickled ({_explain(whole)}){hint}")


def _check(obj, what, hint):
    try:
        dumps(obj)
    except Exception as err:
        raise TypeError(
            f"{what} cannot be pickled, so it cannot be stored or sent to another process "
            f"({_explain(err)}). Pass something picklable (a path, plain data){hint}") from err


_PLAIN = frozenset({int, float, str, bytes, bool, type(None), complex})
_CONTAINERS = (list, tuple, dict, set, frozenset)
_LOCKS = (type(threading.Lock()), type(threading.RLock()), threading.Condition,
          threading.Semaphore, threading.Event, threading.Barrier)
_GENERATORS = (types.GeneratorType, types.AsyncGeneratorType, types.CoroutineType)


def refuse(arg, what, hint=None):
    """Raise TypeError if ``arg``, or an item of a list, tuple, set or dict ``arg``
    (one level deep), is something a disk store must not keep: an open file
    (cloudpickle would copy its whole content into the store), a socket, a lock,
    a generator or coroutine, a thread. The message names the argument and says
    what to pass instead. Cheap: a type test per value."""
    hint = MEMORY_HINT if hint is None else hint
    kind = _unshippable(arg)
    if kind is not None:
        raise TypeError(f"{what} is {_advice(kind, arg, hint)}")
    if type(arg) in _PLAIN or not isinstance(arg, _CONTAINERS):
        return
    values = arg.values() if isinstance(arg, dict) else arg
    if all(_kind_of_type(t) is None for t in set(map(type, values))):
        return  # the common case: one C-speed pass over the types, no per-item Python
    items = (((f"the value at key {k!r}", v) for k, v in arg.items()) if isinstance(arg, dict)
             else ((f"item {i}", v) for i, v in enumerate(arg)))
    for where, item in items:
        kind = _unshippable(item)
        if kind is not None:
            raise TypeError(f"{what}: {where} ({type(item).__name__}) is {_advice(kind, item, hint)}")


def _unshippable(obj):
    """What kind of thing a disk store must not keep ``obj`` is, or None."""
    kind = _kind_of_type(type(obj))
    if kind == "file" and any(obj is s for s in (sys.stdout, sys.stderr, sys.stdin)):
        return None  # cloudpickle ships the standard streams by name
    if kind == "maybe file":  # tempfile.NamedTemporaryFile's wrapper holds the file
        return "file" if isinstance(getattr(obj, "__dict__", {}).get("file"), io.IOBase) else None
    return kind


_KINDS = {t: None for t in _PLAIN}  # type -> kind, filled as types are met


def _kind_of_type(t):
    try:
        return _KINDS[t]
    except KeyError:
        pass
    kind = None
    if issubclass(t, io.IOBase):
        kind = None if issubclass(t, (io.BytesIO, io.StringIO)) else "file"
    elif issubclass(t, socket.socket):
        kind = "socket"
    elif issubclass(t, _LOCKS):
        kind = "lock"
    elif issubclass(t, _GENERATORS):
        kind = "generator"
    elif issubclass(t, threading.Thread):
        kind = "thread"
    elif t.__module__ == "tempfile":
        kind = "maybe file"
    if len(_KINDS) < 10_000:  # classes made on the fly must not grow it for ever
        _KINDS[t] = kind
    return kind


MEMORY_HINT = ("; or use Queue(storage='memory'), which keeps arguments by reference in "
               "this process")
THREAD_HINT = ("; or use worker_type='thread' on a memory store, which keeps arguments by "
               "reference in this process")


def _advice(kind, obj, hint):
    if kind == "file":
        name = getattr(obj, "name", None)
        path = f"the path ({name!r})" if isinstance(name, (str, bytes)) else "its path"
        return (f"a file object: a disk store would copy the whole file into the store. "
                f"Pass {path} instead and open the file inside the task" + hint)
    if kind == "socket":
        return ("a socket, which cannot leave this process. Pass its address (a path, or "
                "host and port) instead and connect inside the task" + hint)
    if kind == "lock":
        article = "an" if type(obj).__name__[0] in "AEIOU" else "a"
        return (f"{article} {type(obj).__name__}, which only works inside one process. Pass a path "
                "(a lock file, a directory to write to) or plain data instead and "
                "coordinate inside the task" + hint)
    if kind == "generator":
        return ("a generator (or coroutine), which cannot be stored and runs only once. Pass "
                "a list (list(gen)) or the path of the data instead and iterate inside the "
                "task" + hint)
    return ("a thread, which cannot leave this process. Pass what it works on (a path, "
            "plain data) instead" + hint)


def code_fingerprint(func):
    """Bytes that change when ``func``'s code changes, and only then: its bytecode,
    constants (nested functions included) and names, not its file or line numbers
    (a notebook cell's file name changes each time it runs)."""
    code = getattr(func, "__code__", None)
    if code is None:  # a builtin or a callable object: its qualified name
        return repr((getattr(func, "__module__", None), getattr(func, "__qualname__", repr(func)))).encode()
    return _code_bytes(code)


def _code_bytes(code):
    parts = [code.co_code, repr(code.co_names).encode(), repr(code.co_varnames).encode()]
    for const in code.co_consts:
        parts.append(_code_bytes(const) if hasattr(const, "co_code") else repr(const).encode())
    return b"\0".join(parts)


def decode_call(payload):
    return loads(payload)


def encode_value(value, hint="; return plain data, or use Queue(storage='memory')"):
    """Pickle a task's return value. Raises TypeError with advice (``hint``) if
    it cannot be."""
    try:
        return dumps(value)
    except Exception as err:
        raise TypeError(
            f"the task returned a {type(value).__name__}, which cannot be pickled "
            f"({_explain(err)}){hint}") from err


def describe_exception(exc, pickle_it):
    """A dict describing ``exc``: type name, message, traceback text, and the exception
    itself (the object, or its pickle when ``pickle_it``; None if it cannot be pickled)."""
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ in ("builtins", "__main__") else f"{cls.__module__}.{cls.__qualname__}"
    text = "".join(tb.format_exception(cls, exc, exc.__traceback__))
    kept = exc
    if pickle_it:
        try:
            kept = dumps(exc.with_traceback(None))
        except Exception:
            kept = None
    return {"type": name, "message": str(exc), "traceback": text, "exc": kept}


def exception_from(error, pickled):
    """The original exception object from a ``describe_exception`` dict, or None."""
    kept = error.get("exc")
    if kept is None or not pickled:
        return kept
    try:
        return loads(kept)
    except Exception:
        return None

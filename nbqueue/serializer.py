"""The one place that turns calls, values and exceptions into bytes and back.

cloudpickle ships functions defined in ``__main__`` (a notebook) by value, so
another process runs them without importing the notebook; functions from
importable modules travel by reference.
"""

import pickle
import traceback as tb

import cloudpickle

PROTOCOL = pickle.HIGHEST_PROTOCOL


def dumps(obj):
    return cloudpickle.dumps(obj, protocol=PROTOCOL)


def loads(data):
    return pickle.loads(data)


def _explain(err):
    return f"{type(err).__name__}: {err}"


def encode_call(name, func, args, kwargs, retry_on):
    """Pickle a call. Raises TypeError naming the argument that cannot be pickled."""
    try:
        return dumps((func, args, kwargs, retry_on))
    except Exception as err:
        whole = err
    for i, arg in enumerate(args):
        _check(arg, f"argument {i} ({type(arg).__name__}) of {name}()")
    for key, arg in kwargs.items():
        _check(arg, f"keyword argument {key!r} ({type(arg).__name__}) of {name}()")
    _check(func, f"the function {name}")
    raise TypeError(f"the call {name}() cannot be pickled for a disk store ({_explain(whole)})")


def _check(obj, what):
    try:
        dumps(obj)
    except Exception as err:
        raise TypeError(
            f"{what} cannot be pickled, so it cannot be stored on disk ({_explain(err)}). "
            "Pass something picklable (a path, plain data), or use Queue(storage='memory'), "
            "which keeps arguments by reference.") from err


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


def encode_value(value):
    """Pickle a task's return value. Raises TypeError with advice if it cannot be."""
    try:
        return dumps(value)
    except Exception as err:
        raise TypeError(
            f"the task returned a {type(value).__name__}, which cannot be pickled for a disk "
            f"store ({_explain(err)}); return plain data, or use Queue(storage='memory')") from err


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

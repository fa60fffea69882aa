"""Checks for every number a user gives nbqueue: type, finite, range.

Each raises TypeError (wrong type) or ValueError (NaN, infinite, out of range)
naming the argument and saying what to give instead, before anything is stored.
"""

import datetime
import math
import numbers

#: the latest eta or expiry accepted: far enough for any real schedule, near
#: enough that every clock and datetime computation stays in range
HORIZON = 100 * 365 * 86400.0


def check_count(value, what, minimum=0, maximum=None, hint=""):
    """A whole number >= ``minimum`` (and <= ``maximum``). Returns it as an int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what}={value!r}: give a whole number >= {minimum} {hint}".rstrip())
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{what}={value!r}: give a whole number {bound} {hint}".rstrip())
    return int(value)


def check_number(value, what, minimum=None, maximum=None, strict=False, unit=""):
    """A finite real number in range (``strict``: > ``minimum``). Returns a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what}={value!r}: give a number{unit}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what}={value!r}: give a finite number{unit}")
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        raise ValueError(f"{what}={value!r}: give a number{unit} {'>' if strict else '>='} {minimum:g}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{what}={value!r}: give a number{unit} <= {maximum:g}")
    return value


def check_seconds(value, what, minimum=0.0, maximum=HORIZON, strict=False):
    """Seconds as a number or a timedelta: finite, in range. Returns a float."""
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what}={value!r}: give a number of seconds or a timedelta")
    return check_number(value, what, minimum, maximum, strict, unit=" of seconds")


def check_timestamp(when, what, now):
    """A ``time.time()`` float from a datetime (naive: local time) or a float
    timestamp, no further than ``HORIZON`` from ``now``."""
    if isinstance(when, datetime.datetime):
        try:
            ts = when.timestamp()
        except (OverflowError, OSError, ValueError) as err:
            raise ValueError(f"{what}={when!r}: out of range ({err})") from None
    elif isinstance(when, numbers.Real) and not isinstance(when, bool):
        ts = check_number(when, what)
    else:
        raise TypeError(f"{what}={when!r}: give a datetime (or a time.time() timestamp)")
    if abs(ts - now) > HORIZON:
        raise ValueError(f"{what}={when!r}: more than 100 years away; give a nearer time")
    return ts


def check_priority(value, what="priority"):
    """A task priority: a whole number from -1,000,000 to 1,000,000 (higher runs first)."""
    return check_count(value, what, minimum=-1_000_000, maximum=1_000_000,
                       hint="(higher runs first)")


WORKER_TYPES = ("thread", "process")


def check_worker_type(value, what="worker_type"):
    """"thread" or "process"; else ValueError saying what each means."""
    if value not in WORKER_TYPES:
        raise ValueError(f"{what}={value!r}: use 'thread' (threads of this process) or 'process' "
                         "(each worker runs its tasks in a process of its own)")
    return value

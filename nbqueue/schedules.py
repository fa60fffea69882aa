"""Schedules of periodic jobs: cron lines and intervals. The only module that
imports croniter (lazily: ``import nbqueue`` stays light).

Cron lines are read by croniter in the job's timezone (default: local time,
DST included). A six-field line puts seconds first: ``"*/10 * * * * *"`` runs
every 10 seconds; ``@hourly @daily @weekly @monthly @yearly`` are shorthands. ``every=`` intervals are aligned to the epoch, so
``every=timedelta(seconds=30)`` fires at :00 and :30.
"""

import datetime
import functools
import math
import os

from .validation import check_seconds

MAX_COUNTED_MISSES = 1000
MIN_EVERY = 0.01   # seconds: a shorter interval would only burn a core


def local_zone():
    """Local time as a DST-aware zone: $TZ, else /etc/localtime, else a fixed offset."""
    from zoneinfo import ZoneInfo
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return ZoneInfo(name)
        except Exception:
            pass
    try:
        with open("/etc/localtime", "rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError):
        return datetime.datetime.now().astimezone().tzinfo


def zone(name):
    """The tzinfo for an IANA name (None: local). Raises ValueError naming a bad one."""
    if name is None:
        return local_zone()
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as err:
        raise ValueError(f"unknown timezone {name!r}; give an IANA name like 'Europe/Paris' "
                         "or 'America/New_York' (None means local time)") from err


#: the ``@`` shorthands croniter reads, as their cron lines
ALIASES = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
           "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
           "@hourly": "0 * * * *"}
#: (name as crontab() spells it, what its values are, how many there are)
FIELDS = (("minute", "minutes are 0-59", 60), ("hour", "hours are 0-23", 24),
          ("day", "days are 1-31, or L for the last", 31),
          ("month", "months are 1-12 or jan-dec", 12),
          ("day_of_week", "days of the week are 0-6 or sun-sat, 7 is Sunday too", 7))
SECOND = ("second", "seconds are 0-59", 60)


def check_cron(line):
    """Validate a cron line: 5 fields (minute hour day month day_of_week), 6 with
    seconds first, or a shorthand (``@hourly @daily @weekly @monthly @yearly``).
    Returns it with its spaces normalised (a shorthand as given, in lower case).

    Raises TypeError for a non-string and ValueError, at once, for a bad line: one
    naming the field that is out of range (``"*/61 * * * *"``: the minute field),
    or saying the date never occurs (``"0 0 31 2 *"``: February 31).
    """
    from croniter import CroniterBadDateError, croniter
    if not isinstance(line, str):
        raise TypeError(f"a cron line is a string like '*/15 * * * *', not {line!r}")
    line = " ".join(line.split())
    if line.startswith("@"):
        alias = line.lower()
        if alias not in ALIASES:
            raise ValueError(f"bad cron line {line!r}: the shorthands are "
                             f"{', '.join(ALIASES)}; or give 5 fields")
        return alias
    fields = line.split()
    if len(fields) not in (5, 6):
        raise ValueError(
            f"bad cron line {line!r}: give 5 fields (minute hour day month day_of_week) "
            "or 6 with seconds first ('*/10 * * * * *' = every 10 seconds), or a shorthand "
            "like '@daily'")
    specs = FIELDS if len(fields) == 5 else (SECOND, *FIELDS)
    for i, (field, (name, values, size)) in enumerate(zip(fields, specs)):
        probe = ["*"] * len(fields)
        probe[i] = field
        if not croniter.is_valid(" ".join(probe), second_at_beginning=True):
            raise ValueError(f"bad cron line {line!r}: the {name} field {field!r} is out of "
                             f"range or unreadable ({values})")
        for item in field.split(","):
            step = item.rpartition("/")[2] if "/" in item else ""
            if step.isdigit() and not 1 <= int(step) <= size:
                raise ValueError(f"bad cron line {line!r}: the {name} field {field!r} has a "
                                 f"step of {step}, out of range: give a step from 1 to {size} "
                                 f"({values})")
    if not croniter.is_valid(line, second_at_beginning=True):
        raise ValueError(f"bad cron line {line!r}: croniter cannot read it; fields are "
                         "minute hour day month day_of_week (a 6th, first, for seconds)")
    try:
        croniter(line, _EPOCH_2000, second_at_beginning=True).get_next(float)
    except CroniterBadDateError:
        day, month, dow = fields[-3:]
        also = f" on day_of_week {dow!r}" if dow not in ("*", "?") else ""
        raise ValueError(f"bad cron line {line!r}: it never fires, the date it names never "
                         f"occurs (day {day!r} of month {month!r}{also}); pick a day that "
                         "exists in that month, or 'L' for the last day") from None
    return line


_EPOCH_2000 = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)


class crontab:  # noqa: N801 -- Huey's spelling
    """A validated cron schedule, Huey-style: ``crontab(minute="*/15")``.

    ``str()`` is the cron line (``str(crontab(minute="0", hour="3")) == "0 3 * * *"``);
    calling it with a datetime tells whether that minute matches, as Huey's does.
    Raises ValueError at once for a bad field.
    """

    def __init__(self, minute="*", hour="*", day="*", month="*", day_of_week="*", second=None):
        parts = [("minute", minute), ("hour", hour), ("day", day), ("month", month),
                 ("day_of_week", day_of_week)]
        if second is not None:
            parts.insert(0, ("second", second))
        for name, value in parts:
            if (isinstance(value, bool) or not isinstance(value, (str, int))
                    or not str(value).strip() or " " in str(value).strip()):
                raise ValueError(f"crontab({name}={value!r}): give one cron field like "
                                 "'*/5', '0,30' or 3")
        self.line = check_cron(" ".join(str(value).strip() for _, value in parts))

    def __str__(self):
        return self.line

    def __repr__(self):
        return f"crontab({self.line!r})"

    def __eq__(self, other):
        return isinstance(other, crontab) and other.line == self.line

    def __hash__(self):
        return hash(self.line)

    def __call__(self, when):
        from croniter import croniter
        return croniter.match(self.line, when, second_at_beginning=True)


def make_schedule(cron=None, every=None, timezone=None):
    """(schedule text, interval seconds or None, timezone name) from the decorator's
    arguments. Raises ValueError/TypeError naming what is wrong."""
    if (cron is None) == (every is None):
        raise ValueError("give a cron line (@q.periodic('*/15 * * * *')) or an interval "
                         "(@q.periodic(every=timedelta(seconds=30))), not both or neither")
    zone(timezone)  # validates
    if every is not None:
        every = check_seconds(every, "every", minimum=MIN_EVERY, maximum=366 * 86400.0)
        return f"every {every:g}s", float(every), timezone
    if isinstance(cron, crontab):
        cron = str(cron)
    return check_cron(cron), None, timezone


def next_tick(job, after):
    """The first tick of ``job`` strictly after the ``time.time()`` float ``after``."""
    if job.every:
        return (math.floor(after / job.every) + 1) * job.every
    return _next_cron_tick(job.schedule, job.timezone, after)


@functools.lru_cache(maxsize=256)
def _next_cron_tick(schedule, timezone, after):
    # croniter takes about a millisecond: the scheduler asks for the tick after a
    # job's next run before it sleeps, so firing on the boundary finds it here.
    from croniter import croniter
    start = datetime.datetime.fromtimestamp(after, zone(timezone))
    return croniter(schedule, start, second_at_beginning=True).get_next(float)


def plan_tick(job, now):
    """What to do with a due tick at ``now``: ``("run" | "miss", next_run, missed)``.

    A tick is missed when it is late by more than half its period (at most
    10 s, at least 1 s): nobody was scheduling then (kernel stopped, job
    paused). Missed ticks run once if ``catch_up``, else not at all.
    """
    due = job.next_run
    after_due = next_tick(job, due)
    nxt = after_due if now < after_due else next_tick(job, now)
    period = after_due - due
    if now - due <= max(1.0, min(10.0, period / 2)):
        return "run", nxt, 0
    missed, t = 0, due
    while t <= now and missed < MAX_COUNTED_MISSES:
        missed += 1
        t = next_tick(job, t)
    return ("run" if job.catch_up else "miss"), nxt, missed

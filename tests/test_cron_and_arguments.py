"""Cron lines checked at decoration (shorthands, a field out of range, a date that
never occurs, seconds first in six fields, ``str(crontab(...))``, no stacked
decorators), and the arguments a disk store refuses at submit (open files, sockets,
locks, generators, threads) while a memory store takes them by reference.

Queue tests run on the memory store and on a disk store (``queue``, ``make_queue``).
"""

import datetime
import io
import socket
import tempfile
import threading

import pytest

from nbqueue import crontab
from nbqueue.records import JobRecord
from nbqueue.schedules import check_cron, next_tick

WAIT = 10  # generous upper bound for anything that should take milliseconds


def nothing():
    return None


def identity(x):
    return x


def kind_of(*args, **kwargs):
    return [type(x).__name__ for x in args]


@pytest.fixture
def idle(make_queue):
    """A queue with no threads running: decorating is all these tests do."""
    return make_queue(start=False)


# ---- cron -------------------------------------------------------------------------
@pytest.mark.parametrize("alias, line", [
    ("@hourly", "0 * * * *"), ("@daily", "0 0 * * *"), ("@weekly", "0 0 * * 0"),
    ("@monthly", "0 0 1 * *"), ("@yearly", "0 0 1 1 *"), ("@annually", "0 0 1 1 *"),
    ("@midnight", "0 0 * * *"),
])
def test_shorthands_are_accepted_and_fire_like_their_lines(idle, alias, line):
    job = idle.periodic(alias, timezone="UTC", name=f"job{alias[1:]}")(nothing)
    assert job.schedule == alias
    start = datetime.datetime(2026, 3, 14, 15, 9, 26, tzinfo=datetime.UTC).timestamp()
    as_alias = JobRecord(name="a", schedule=alias, every=None, timezone="UTC")
    as_line = JobRecord(name="l", schedule=line, every=None, timezone="UTC")
    t1 = t2 = start
    for _ in range(3):
        t1, t2 = next_tick(as_alias, t1), next_tick(as_line, t2)
        assert t1 == t2


def test_shorthands_ignore_case_and_unknown_ones_are_refused(idle):
    assert check_cron(" @Daily ") == "@daily"
    with pytest.raises(ValueError, match="@reboot.*shorthands are"):
        idle.periodic("@reboot")
    assert idle.periodic_jobs() == []


@pytest.mark.parametrize("line, field", [
    ("*/61 * * * *", "minute"), ("61 * * * *", "minute"), ("1-70 * * * *", "minute"),
    ("0 25 * * *", "hour"), ("0 */25 * * *", "hour"),
    ("0 0 32 * *", "day"), ("0 0 0 * *", "day"), ("0 0 */32 * *", "day"),
    ("0 0 * 13 *", "month"), ("0 0 * */13 *", "month"),
    ("0 0 * * 8", "day_of_week"), ("0 0 * * */8", "day_of_week"),
    ("*/61 * * * * *", "second"), ("60 0 * * * *", "second"), ("0 61 * * * *", "minute"),
])
def test_a_field_out_of_range_is_a_value_error_naming_it(idle, line, field):
    with pytest.raises(ValueError, match=f"the {field} field") as info:
        idle.periodic(line)(nothing)
    assert type(info.value) is ValueError
    assert idle.periodic_jobs() == []


@pytest.mark.parametrize("line", ["0 0 31 2 *", "0 0 30 2 *", "0 0 31 4,6,9,11 *",
                                  "0 0 0 31 2 *"])
def test_a_date_that_never_occurs_is_a_value_error(idle, line):
    with pytest.raises(ValueError, match="never occurs") as info:
        idle.periodic(line)(nothing)
    assert type(info.value) is ValueError  # not croniter's CroniterBadDateError
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert "month" in str(info.value) and "day" in str(info.value)


@pytest.mark.parametrize("line", ["0 0 29 2 *", "0 0 31 2,3 *", "0 0 L 2 *", "0 0 31 2 mon",
                                  "*/60 * * * *", "0 */24 * * *", "0 0 * * */7", "0 0 * * 7"])
def test_lines_that_do_fire_are_accepted(idle, line):
    assert check_cron(line) == line


def test_six_fields_put_seconds_first(idle):
    job = idle.periodic("*/10 * * * * *", timezone="UTC")(nothing)
    assert job.schedule == "*/10 * * * * *"
    rec = JobRecord(name="j", schedule="*/10 * * * * *", every=None, timezone="UTC")
    t = datetime.datetime(2026, 1, 1, 12, 0, 3, tzinfo=datetime.UTC).timestamp()
    assert next_tick(rec, t) == t + 7
    rec = JobRecord(name="j", schedule="30 15 * * * *", every=None, timezone="UTC")
    assert next_tick(rec, t) == t - 3 + 15 * 60 + 30  # 12:15:30


def test_crontab_str_is_the_line_and_bad_fields_are_named():
    assert str(crontab()) == "* * * * *"
    assert str(crontab(minute=0, hour=3)) == "0 3 * * *"
    assert str(crontab(minute="*/15", day_of_week="mon-fri")) == "*/15 * * * mon-fri"
    assert str(crontab(second="*/10")) == "*/10 * * * * *"
    with pytest.raises(ValueError, match="minute field"):
        crontab(minute=61)
    with pytest.raises(ValueError, match="hour field"):
        crontab(hour="25")
    with pytest.raises(ValueError, match="second field"):
        crontab(second="*/61")
    with pytest.raises(ValueError, match="never occurs"):
        crontab(minute=0, hour=0, day=31, month=2)
    with pytest.raises(ValueError, match=r"crontab\(day_of_week=''\)"):
        crontab(day_of_week="")


def test_periodic_takes_a_crontab(idle):
    job = idle.periodic(crontab(minute="*/5", hour="9-17"))(nothing)
    assert job.schedule == "*/5 9-17 * * *"
    with pytest.raises(ValueError, match="hour field"):
        idle.periodic_task("0 24 * * *")


def test_stacked_decorators_are_a_type_error(idle):
    job = idle.periodic("@hourly")(nothing)
    with pytest.raises(TypeError, match="stack no decorators"):
        idle.periodic("@daily")(job)
    with pytest.raises(TypeError, match="stack no decorators"):
        idle.periodic("@daily")(idle.task(identity))
    with pytest.raises(TypeError, match="one task or one periodic job"):
        idle.task(job)
    assert [j.name for j in idle.periodic_jobs()] == [job.name]
    assert job.schedule == "@hourly"


# ---- arguments a disk store refuses -------------------------------------------------
@pytest.fixture
def things(tmp_path):
    """``{kind: factory}`` of arguments a disk store must refuse; all closed at the end."""
    data = tmp_path / "data.csv"
    data.write_text("a,b\n1,2\n")
    made = []

    def keep(obj):
        made.append(obj)
        return obj

    def generator():
        yield from range(3)

    factories = {
        "text file": lambda: keep(open(data)),
        "binary file": lambda: keep(open(data, "rb")),
        "temporary file": lambda: keep(tempfile.NamedTemporaryFile(dir=tmp_path)),
        "socket": lambda: keep(socket.socket()),
        "lock": threading.Lock,
        "rlock": threading.RLock,
        "event": threading.Event,
        "condition": threading.Condition,
        "semaphore": threading.Semaphore,
        "generator": generator,
        "thread": lambda: threading.Thread(target=nothing),
    }
    yield factories
    for obj in made:
        obj.close()


KINDS = ["text file", "binary file", "temporary file", "socket", "lock", "rlock", "event",
         "condition", "semaphore", "generator", "thread"]


@pytest.mark.parametrize("kind", KINDS)
def test_disk_refuses_and_memory_accepts(queue, things, kind):
    t = queue.task(identity)
    obj = things[kind]()
    if not queue.store.serializes:  # memory: kept by reference, the task gets the object
        assert t(obj).get(timeout=WAIT) is obj
        return
    before = queue.counts()
    with pytest.raises(TypeError) as info:
        t(obj)
    message = str(info.value)
    assert "argument 0" in message and "path" in message and "storage='memory'" in message
    assert queue.counts() == before  # nothing enqueued


@pytest.mark.parametrize("kind", KINDS)
def test_refused_inside_a_list_tuple_or_dict_and_as_a_keyword(queue, things, kind):
    t = queue.task(kind_of)
    calls = {
        "list": ((lambda o: t(1, [1, o])), "item 1"),
        "tuple": ((lambda o: t((o, 2))), "item 0"),
        "dict": ((lambda o: t({"src": o})), "key 'src'"),
        "keyword": ((lambda o: t(1, src=o)), "keyword argument 'src'"),
        "keyword list": ((lambda o: t(1, src=[o])), r"keyword argument 'src' \(list\) .*: item 0"),
        "schedule": ((lambda o: t.schedule(args=([o],), delay=60)), "item 0"),
        "map": ((lambda o: t.map([1, o])), "argument 0"),
    }
    for name, (call, where) in calls.items():
        obj = things[kind]()
        if not queue.store.serializes:
            call(obj)  # memory: accepted
            continue
        with pytest.raises(TypeError, match=where) as info:
            call(obj)
        assert "path" in str(info.value), name
    if queue.store.serializes:
        assert queue.counts()["pending"] == 0 and queue.counts()["scheduled"] == 0


def test_open_file_on_memory_is_read_by_the_task(memory_queue, tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("a,b\n1,2\n")

    def first_line(f):
        return f.readline().strip()

    with open(data) as f:
        assert memory_queue.task(first_line)(f).get(timeout=WAIT) == "a,b"
    gen = (i * i for i in range(4))
    assert memory_queue.task(sum)(gen).get(timeout=WAIT) == 14


def test_the_message_names_the_file_and_suggests_its_path(disk_queue, tmp_path):
    data = tmp_path / "big.csv"
    data.write_text("x\n" * 1000)
    with open(data) as f, pytest.raises(TypeError) as info:
        disk_queue.task(identity)(f)
    message = str(info.value)
    assert "argument 0 (TextIOWrapper) of" in message
    assert repr(str(data)) in message and "open the file inside the task" in message


def test_plain_containers_and_in_memory_buffers_still_go_to_disk(disk_queue):
    t = disk_queue.task(identity)
    value = [1, "a", (2, 3), {"k": [4]}, None, 2.5]
    assert t(value).get(timeout=WAIT) == value
    assert t(io.BytesIO(b"abc")).get(timeout=WAIT).getvalue() == b"abc"  # not a file on disk
    assert t({"x": io.StringIO("s")}).get(timeout=WAIT)["x"].getvalue() == "s"

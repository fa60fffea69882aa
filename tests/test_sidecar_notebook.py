"""notebooks/sidecar.ipynb executed in a real kernel, and a sidecar that outlives a
kernel restart (nbclient, the kernel restarted while the sidecar runs a task).

A sidecar is a detached process: every test here also kills, at its end, whatever
sidecar is left on its store (its process group: the sidecar and its task processes),
so a failing test leaves nothing running.
"""

import os
import re
import signal
import textwrap
import time

import pytest

from conftest import wait_until
from test_notebooks import Widgets, cell, execute, kernel_name, text_of, view_id  # noqa: F401

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
from nbclient.util import run_sync  # after the skip: nbclient may be missing

pytestmark = pytest.mark.slow


def _stat(pid):
    """``(state, process group)`` of ``pid`` from /proc, or None if it has no entry."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[2])


def gone(pid):
    """True once ``pid`` runs nothing (no such process, or a zombie awaiting its reaper)."""
    stat = _stat(pid)
    return stat is None or stat[0] == "Z"


def group(pgid):
    """The live processes of process group ``pgid``: a sidecar leads its own (it is
    started in a new session) and the processes that run its tasks are in it."""
    members = []
    for entry in os.listdir("/proc"):
        stat = _stat(entry) if entry.isdigit() else None
        if stat is not None and stat[1] == pgid and stat[0] != "Z":
            members.append(int(entry))
    return members


def sidecar_pids(store):
    """Pids of the ``nbqueue worker`` processes started on ``store`` (a unique temp
    directory, so these are this test's sidecars only)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "nbqueue" in argv and "worker" in argv and str(store) in argv:
            found.append(int(entry))
    return found


def kill_sidecars(store, *pids):
    """SIGKILL the process groups of the sidecars on ``store`` (and of ``pids``): a
    sidecar leads a session of its own, and its task processes are in its group."""
    for pid in {*pids, *sidecar_pids(store)} - {None}:
        try:
            os.killpg(pid, signal.SIGKILL)  # no such group: nothing of it is left
        except OSError:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


# ---- notebooks/sidecar.ipynb ------------------------------------------------------

@pytest.fixture(scope="module")
def sidecar_run(tmp_path_factory, kernel_name):  # noqa: F811 (the imported fixture)
    """The executed notebook, its working directory, how long it took, and the pids of
    the sidecar's processes still running 10 s after the notebook ended (killed then)."""
    workdir = tmp_path_factory.mktemp("sidecar")
    store = workdir / "store"
    started, sidecar = time.monotonic(), None
    try:
        nb = execute("sidecar.ipynb", workdir, kernel_name)
        took = time.monotonic() - started
        sidecar = int(re.search(r"sidecar pid (\d+)", text_of(cell(nb, "start"))).group(1))

        def left():
            return sorted({*group(sidecar), *sidecar_pids(store)})

        wait_until(lambda: not left(), timeout=10)
        left_running = left()
    finally:
        kill_sidecars(store, sidecar)
    print(f"\nsidecar.ipynb ran in {took:.1f} s")
    return nb, workdir, took, left_running


def test_sidecar_notebook_runs_without_errors_in_time(sidecar_run):
    nb, _, took, _ = sidecar_run
    errors = [(c.id, o.ename, o.evalue) for c in nb.cells if c.cell_type == "code"
              for o in c.outputs if o.output_type == "error"]
    assert errors == []
    assert took < 45, f"the notebook took {took:.1f} s; keep it well under a minute"


def test_cpu_task_succeeds_in_a_sidecar_process(sidecar_run):
    nb, _, _, _ = sidecar_run
    n = 25 * 1_000_000
    cycle = [i * i % 7 for i in range(7)]
    expected = sum(cycle) * (n // 7) + sum(cycle[:n % 7])
    assert text_of(cell(nb, "crunch-result")).splitlines()[0] == f"crunch: {expected} - succeeded"
    kernel_pid = int(re.search(r"this kernel: pid (\d+)", text_of(cell(nb, "start"))).group(1))
    task_pid = int(re.search(r"crunch ran in process (\d+)", text_of(cell(nb, "crunch-result"))).group(1))
    assert task_pid != kernel_pid
    # progress and prints made in the sidecar's process reach the widget in the notebook
    w = Widgets(nb)
    tree = w.tree(view_id(cell(nb, "submit")))
    assert w.bar(tree) == (100.0, "success")
    html = w.html(tree)
    assert "crunch" in html and "nbqueue-succeeded" in html and "25/25" in html
    assert f"crunch ran in process {task_pid}\n" in w.log(tree)


def test_main_thread_timing_is_printed_while_the_task_runs(sidecar_run):
    """Numbers only: the ratio depends on the machine (its cores are shared)."""
    nb, _, _, _ = sidecar_run
    assert re.fullmatch(r"idle: [\d.]+ ms\n", text_of(cell(nb, "baseline")))
    out = text_of(cell(nb, "responsive"))
    ratio = re.search(r"while crunch is running: [\d.]+ ms, ([\d.]+)x the idle time", out)
    assert ratio, out  # measured while crunch ran, not after
    assert re.search(r"crunch meanwhile: (0|\d+/25 [\d,]+ numbers)\n", out), out  # 0: no report yet
    print(f"\nmain-thread loop while crunch ran: {ratio.group(1)}x its idle time")


def test_sleeping_task_is_cancelled_within_seconds(sidecar_run):
    nb, _, _, _ = sidecar_run
    out = text_of(cell(nb, "cancel"))
    assert out.startswith("nap is running\n"), out
    took = re.search(r"nap is (\w+) ([\d.]+) s after cancel\(\)", out)
    assert took and took.group(1) == "cancelled", out
    assert float(took.group(2)) < 3, out


def test_status_results_by_id_and_background_cell(sidecar_run):
    nb, _, _, _ = sidecar_run
    status = text_of(cell(nb, "status"))
    sidecar_pid = int(re.search(r"sidecar pid (\d+)", text_of(cell(nb, "start"))).group(1))
    assert f"'pid': {sidecar_pid}," in status and "'kind': 'process'" in status
    assert text_of(cell(nb, "after-restart")) == "True\ncrunch succeeded\nnap cancelled\n"
    assert text_of(cell(nb, "bg-result")).startswith(
        "primes below 50,000: 5133\nprimes[-3:] came back too: [49991, 49993, 49999]\n")
    w = Widgets(nb)
    tree = w.tree(view_id(cell(nb, "background")))
    assert "nbqueue-succeeded" in w.html(tree)
    assert re.search(r"found 5133 primes in process \d+\n", w.log(tree))


def test_sidecar_is_stopped_and_no_process_is_left(sidecar_run):
    nb, workdir, _, left_running = sidecar_run
    assert text_of(cell(nb, "stop")) == "stopped: True\nsidecar now: None\n"
    assert left_running == []  # the sidecar and its task processes exited by themselves
    sidecar = int(re.search(r"sidecar pid (\d+)", text_of(cell(nb, "start"))).group(1))
    task = int(re.search(r"crunch ran in process (\d+)", text_of(cell(nb, "crunch-result"))).group(1))
    assert gone(sidecar) and gone(task)
    log = (workdir / "store" / "sidecar.log").read_text()
    assert "stopped" in log and "Traceback" not in log, log


# ---- a kernel restart while the sidecar runs a task ---------------------------------

def code_cell(source):
    return nbformat.v4.new_code_cell(textwrap.dedent(source).strip())


def test_sidecar_and_its_result_outlive_a_kernel_restart(tmp_path, kernel_name):  # noqa: F811
    store, id_file = tmp_path / "store", tmp_path / "task-id"
    before = [
        code_cell(f"""
            import os, time
            import nbqueue
            q = nbqueue.Queue("jobs", storage={str(store)!r}, workers=0)
            info = q.start_sidecar(workers=1, worker_type="process")
            print(info["pid"], os.getpid())
        """),
        code_cell(f"""
            @q.task
            def slow_square(x):
                time.sleep(2)
                return x * x

            r = slow_square(12)
            while r.status == "pending":
                time.sleep(0.02)
            with open({str(id_file)!r}, "w") as f:
                f.write(r.id)
            print(r.status)
        """),
    ]
    after = [
        code_cell(f"""
            import os
            import nbqueue
            q = nbqueue.Queue("jobs", storage={str(store)!r}, workers=0)
            with open({str(id_file)!r}) as f:
                tid = f.read()
            r = q.result(tid)
            print(r.get(timeout=30), r.status, r.attempts, r.started_at.timestamp(),
                  r.finished_at.timestamp())
            print([(t.id, t.name, t.status) for t in q.tasks()])
            print(q.sidecar_status()["pid"], os.getpid())
        """),
        code_cell("""
            print(q.stop_sidecar())
            print(q.sidecar_status())
        """),
    ]
    nb = nbformat.v4.new_notebook(cells=before + after)
    client = nbclient.NotebookClient(nb, timeout=60, kernel_name=kernel_name,
                                     resources={"metadata": {"path": str(tmp_path)}})
    sidecar = None
    try:
        with client.setup_kernel():
            client.execute_cell(nb.cells[0], 0)
            sidecar, kernel_before = map(int, text_of(nb.cells[0]).split())
            client.execute_cell(nb.cells[1], 1)
            assert text_of(nb.cells[1]) == "running\n"
            task_id = id_file.read_text()

            # Restart mid-run: the kernel (its whole process group) is killed and a new
            # one started; the sidecar, in a session of its own, keeps running the task.
            restarted_at = time.time()
            run_sync(client.km.restart_kernel)(now=True)
            client.kc.stop_channels()
            client.start_new_kernel_client()  # km.client(), start_channels(), wait_for_ready()
            assert not gone(sidecar)

            client.execute_cell(nb.cells[2], 2)
            out = text_of(nb.cells[2])
            assert len(out.splitlines()) == 3, out
            got, tasks, pids = out.splitlines()
            assert len(got.split()) == 5, out
            value, status, attempts, started_at, finished_at = got.split()
            assert (value, status, attempts) == ("144", "succeeded", "1")
            assert float(started_at) < restarted_at < float(finished_at)  # it ran across the restart
            assert tasks == str([(task_id, "slow_square", "succeeded")])
            sidecar_after, kernel_after = map(int, pids.split())
            assert sidecar_after == sidecar  # the same sidecar, never restarted
            assert kernel_after != kernel_before  # a new kernel process

            client.execute_cell(nb.cells[3], 3)
            assert text_of(nb.cells[3]) == "True\nNone\n"
        # stopped: the sidecar and the process that ran the task exited
        assert wait_until(lambda: gone(sidecar) and not group(sidecar), timeout=10), group(sidecar)
    finally:
        kill_sidecars(store, sidecar)

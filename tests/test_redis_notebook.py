"""A notebook in a real Jupyter kernel (nbclient) submits to a Redis queue that an
``nbqueue worker`` process (another machine, as far as the kernel knows) runs: the
task's widget shows it run and succeed there, with its prints in its own log, and
the dashboard shows that worker."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import unique_name, wait_until
from test_notebooks import Widgets, cell, kernel_name, text_of, view_id  # noqa: F401

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = [pytest.mark.redis, pytest.mark.slow]
SECRET = "notebook-secret-1"


def _code(cell_id, source):
    return nbformat.v4.new_code_cell(textwrap.dedent(source).strip(), id=cell_id)


def test_a_notebook_sees_its_tasks_run_by_a_worker_elsewhere(redis_url, tmp_path,
                                                            kernel_name):  # noqa: F811
    name = unique_name("nb")
    env = dict(os.environ, NBQUEUE_SECRET=SECRET)
    worker = subprocess.Popen([sys.executable, "-m", "nbqueue", "worker", redis_url, "--queue",
                               name, "-w", "2"], env=env, cwd=str(tmp_path),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)
    try:
        nb = nbformat.v4.new_notebook()
        nb.cells = [
            _code("setup", f"""
                import os, time, nbqueue
                %load_ext nbqueue
                q = nbqueue.Queue({name!r}, storage={redis_url!r}, secret={SECRET!r}, workers=0)

                @q.task
                def crunch(n):            # defined here: shipped by value to the worker
                    for i in range(n):
                        time.sleep(0.02)
                        nbqueue.progress(i + 1, n, message=f"step {{i + 1}}")
                        print("crunch step", i)
                    return os.getpid()
            """),
            _code("submit", "r = crunch(20)\nr"),
            _code("wait", """
                %nbqueue wait
                print("ran in", r.get(timeout=60), "kernel", os.getpid(), r.status)
            """),
            _code("dashboard", "print(q.dashboard().text())"),
        ]
        client = nbclient.NotebookClient(nb, timeout=120, kernel_name=kernel_name,
                                         resources={"metadata": {"path": str(tmp_path)}},
                                         store_widget_state=True)
        client.execute()
        nbformat.write(nb, tmp_path / "executed-redis.ipynb")   # left for a person to look at

        ran = text_of(cell(nb, "wait")).split("ran in ", 1)[1].split()
        assert ran[-1] == "succeeded", ran
        assert int(ran[0]) == worker.pid != int(ran[2])          # not in the kernel
        w = Widgets(nb)
        tree = w.tree(view_id(cell(nb, "submit")))
        assert w.bar(tree) == (100.0, "success")
        html = w.html(tree)
        assert "crunch" in html and "nbqueue-succeeded" in html and "20/20" in html and "step 20<" in html
        assert "crunch step 19\n" in w.log(tree)
        for c in nb.cells:                                       # its prints stay in its log
            assert "crunch step" not in text_of(c)
        assert f"worker pid {worker.pid}" in text_of(cell(nb, "dashboard"))
    finally:
        os.killpg(worker.pid, signal.SIGINT)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
    assert wait_until(lambda: worker.poll() is not None, timeout=5)

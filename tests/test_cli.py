"""The ``nbqueue`` command: ``demo``, ``status STORE``, ``result STORE ID``, run as a
newcomer runs them (a real process, a real store directory)."""

import os
import subprocess
import sys

import nbqueue

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def nbqueue_cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "nbqueue.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=120)


def test_demo_runs_on_its_default_store_and_remembers_across_runs(tmp_path):
    first = nbqueue_cli("demo", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "crunch   succeeded" in first.stdout and "endless  cancelled" in first.stdout
    assert "cached=False" in first.stdout and "cached=True" in first.stdout
    assert os.path.isfile(tmp_path / ".nbqueue" / "demo" / "nbqueue.db")
    second = nbqueue_cli("demo", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "cached=False" not in second.stdout  # memoized in the store, across processes


def test_status_and_result_of_a_store(tmp_path):
    store = tmp_path / "store"
    q = nbqueue.Queue("cli", storage=str(store), workers=1)
    r = q.task(pow)(2, 10)
    r.get(timeout=10)
    q.shutdown()
    status = nbqueue_cli("status", store)
    assert status.returncode == 0, status.stderr
    assert "1 succeeded" in status.stdout and r.id in status.stdout
    result = nbqueue_cli("result", store, r.id)
    assert result.returncode == 0 and result.stdout.strip() == "1024"
    missing = nbqueue_cli("result", store, "f" * 32)
    assert missing.returncode == 2 and "no task" in missing.stderr


def test_status_of_a_directory_that_is_not_a_store(tmp_path):
    out = nbqueue_cli("status", tmp_path / "nowhere")
    assert out.returncode == 2 and "not an nbqueue store" in out.stderr

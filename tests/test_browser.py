"""nbqueue's widgets in a real browser: JupyterLab driven by headless Chromium (Playwright),
and a notebook exported to static HTML with its widget state.

What the kernel-side tests (test_notebooks.py) cannot see is checked here on the page:
a task widget renders under the cell that submitted it, its bar grows while a later
cell is still running, it ends succeeded/failed/cancelled, its prints are in its own
log and nowhere else, its Cancel button works, a task with no total shows moving
stripes, a cancel not yet acted on shows "cancelling", Retry submits the call again,
a cell run again closes the models of the widget it showed, and the offline HTML
export renders the saved widget state.

Needs: ``pip install playwright jupyterlab nbconvert`` (never ``playwright install``:
Chromium comes from the system, ``apt-get install chromium``), and ``npm`` for the
static export's widget renderer. Without them the tests skip, unless
``NBQUEUE_BROWSER_TESTS=required`` (CI), where a missing piece is a failure.

Every run writes screenshots under tests/artifacts/ (git-ignored); a failed attempt
leaves ``<test>-failed-attempt<n>.png`` and the server log is ``jupyterlab.log``.
What was observed (timings, the Cancel-while-busy behaviour) goes to
``browser-observations.json``.
"""

import contextlib
import importlib.util
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request

import pytest

pytestmark = pytest.mark.browser

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # the browser extra is not installed
    sync_playwright = None

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
ARTIFACTS = HERE / "artifacts"
QUICKSTART = REPO / "notebooks" / "quickstart.ipynb"
LIVE = HERE / "browser" / "live.ipynb"
RETRY = HERE / "browser" / "retry.ipynb"
KERNEL_NAME = "nbqueue-browser"

# Chromium from the system (apt), never a Playwright-downloaded one.
CHROMIUM = os.environ.get("NBQUEUE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]

# Waits are on page state; these only bound how long a broken run takes.
PAGE_TIMEOUT_MS = 30_000
SERVER_START_S = 60

# Lab settings for the test server: no news/update toast over the screenshots, and every
# cell attached to the DOM (the default "contentVisibility" windowing skips rendering
# off-screen cells; "none" keeps what the page is asked about plain).
LAB_OVERRIDES = {
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
}

# Read the page through a few helpers, installed in every page before its scripts run.
# Cells are addressed by their index in the notebook (JupyterLab does not put cell ids
# in the DOM); the same selectors fit nbconvert's HTML, whose body is a .jp-Notebook too.
PAGE_HELPERS = """
window.nbq = {
  cell(i) { return document.querySelectorAll('.jp-Notebook .jp-Cell')[i] || null; },
  prompt(i) {
    const p = this.cell(i) && this.cell(i).querySelector('.jp-InputPrompt');
    return p ? p.textContent.trim() : null;
  },
  // the first task widget under cell i (its own parts, not those of a retry's widget
  // shown inside it): bar width (percent), classes, whether it is striped and moving,
  // state badge, the buttons a reader sees, the log's title, text
  task(i) {
    const w = this.cell(i) && this.cell(i).querySelector('.nbqueue-task');
    return w ? this.read(w) : null;
  },
  read(w) {
    const own = sel => Array.from(w.querySelectorAll(sel)).filter(e => e.closest('.nbqueue-task') === w);
    const fill = own('.nbqueue-bar .nbqueue-fill')[0];
    const state = own('.nbqueue-state')[0];
    const counts = own('.nbqueue-counts')[0];
    const button = name => {
      const b = own('button').find(b => b.textContent.trim() === name);
      return b ? {shown: b.offsetParent !== null, disabled: b.disabled} : null;
    };
    const cancel = button('Cancel'), retry = button('Retry');
    const header = own('.jupyter-widget-Collapse-header')[0];
    const inner = Array.from(w.querySelectorAll('.nbqueue-task'))
      .filter(e => e.parentElement.closest('.nbqueue-task') === w);
    return {
      width: fill && fill.style.width ? parseFloat(fill.style.width) : null,
      barClass: fill ? fill.className : '',
      striped: !!fill && fill.classList.contains('nbqueue-striped'),
      moving: !!fill && fill.getAnimations().some(a => a.animationName === 'nbqueue-stripes'
                                                  && a.playState === 'running'),
      status: state ? state.textContent.trim() : null,
      counts: counts ? counts.textContent : '',
      cancelShown: cancel ? cancel.shown : false,
      cancelDisabled: cancel ? cancel.disabled : null,
      retryShown: retry ? retry.shown : false,
      logTitle: header ? header.textContent.trim() : null,
      log: own('.widget-output').map(o => o.textContent).join(''),
      text: w.textContent,
      inner: inner.length ? this.read(inner[0]) : null,  // a retry's widget inside this one
    };
  },
  // a cell's own output text, widget views and prompts left out
  outputText(i) {
    const area = this.cell(i) && this.cell(i).querySelector('.jp-OutputArea');
    if (!area) return '';
    const copy = area.cloneNode(true);
    copy.querySelectorAll('.jupyter-widgets, .jp-OutputPrompt').forEach(e => e.remove());
    return copy.textContent;
  },
};
"""

_observations = {}


def observe(key, value):
    """Record what a run saw (kept in tests/artifacts/browser-observations.json)."""
    _observations[key] = value
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "browser-observations.json").write_text(json.dumps(_observations, indent=2) + "\n")


def _importable(module):
    return importlib.util.find_spec(module) is not None


def need(ok, reason):
    """Skip when a browser-test dependency is missing; fail instead in CI."""
    if not ok:
        if os.environ.get("NBQUEUE_BROWSER_TESTS") == "required":
            pytest.fail(f"NBQUEUE_BROWSER_TESTS=required but {reason}")
        pytest.skip(reason)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_notebook(src, dst):
    """Copy a notebook, pointing it at the test kernelspec (no "select kernel" dialog)."""
    nb = json.loads(src.read_text())
    nb["metadata"]["kernelspec"] = {"name": KERNEL_NAME, "display_name": "nbqueue browser test",
                                    "language": "python"}
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(json.dumps(nb, indent=1))
    return [c.get("id") for c in nb["cells"]]


# ---- fixtures ---------------------------------------------------------------------
@pytest.fixture(scope="session")
def kernelspec_dir(tmp_path_factory):
    """A JUPYTER_PATH entry holding a kernelspec for this interpreter (which has nbqueue),
    so nothing is installed outside the test's temp dirs."""
    root = tmp_path_factory.mktemp("jupyter-path")
    spec = root / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "nbqueue browser test", "language": "python"}))
    return root


class Lab:
    """A running JupyterLab server and its notebook root directory."""

    def __init__(self, url, root):
        self.url = url
        self.root = root

    def api(self, path, method="GET"):
        req = urllib.request.Request(self.url + path, method=method)
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def add_notebook(self, src, folder):
        """Copy ``src`` into a fresh folder of the root; returns (lab URL, cell ids).
        The URL opens it in a workspace of that folder's name, new and empty: the default
        workspace would reopen the notebooks of earlier tests (and start their kernels)."""
        ids = copy_notebook(src, self.root / folder / src.name)
        return f"{self.url}/lab/workspaces/{folder}/tree/{folder}/{src.name}", ids

    def stop_kernels(self):
        """End every session, so an attempt's endless tasks stop and the next starts clean."""
        for session in self.api("/api/sessions"):
            self.api(f"/api/sessions/{session['id']}", method="DELETE")


@pytest.fixture(scope="session")
def lab(tmp_path_factory, kernelspec_dir):
    need(_importable("jupyterlab"), "jupyterlab is not installed")
    base = tmp_path_factory.mktemp("lab")
    dirs = {name: base / name for name in ("runtime", "config", "data", "settings", "workspaces",
                                           "app-settings", "root")}
    for d in dirs.values():
        d.mkdir()
    (dirs["app-settings"] / "overrides.json").write_text(json.dumps(LAB_OVERRIDES))
    # Throwaway Jupyter dirs: a leftover workspace would reopen old notebooks, user
    # settings would change the page.
    env = dict(os.environ,
               JUPYTER_PATH=os.pathsep.join(filter(None, [str(kernelspec_dir), os.environ.get("JUPYTER_PATH")])),
               JUPYTER_RUNTIME_DIR=str(dirs["runtime"]), JUPYTER_CONFIG_DIR=str(dirs["config"]),
               JUPYTER_DATA_DIR=str(dirs["data"]), JUPYTERLAB_SETTINGS_DIR=str(dirs["settings"]),
               JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]))
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / "jupyterlab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--ServerApp.root_dir={dirs['root']}", "--IdentityProvider.token=", "--ServerApp.password=",
         "--ServerApp.disable_check_xsrf=True", "--allow-root",
         f"--LabServerApp.app_settings_dir={dirs['app-settings']}"],
        env=env, cwd=dirs["root"], stdout=log, stderr=subprocess.STDOUT)
    server = Lab(f"http://127.0.0.1:{port}", dirs["root"])
    try:
        started = time.monotonic()
        deadline = started + SERVER_START_S
        while True:  # ready when /api/status answers (3-5 s here)
            if proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {proc.returncode}; see {log.name}")
            try:
                server.api("/api/status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab not ready after {SERVER_START_S} s; see {log.name}")
                time.sleep(0.1)
        observe("lab_ready_s", round(time.monotonic() - started, 1))
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)  # lets the server shut its kernels down
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")  # Playwright keeps an event loop running: not past this file
def browser():
    need(sync_playwright is not None, "playwright is not installed (pip install playwright)")
    need(CHROMIUM is not None, "no chromium executable (apt-get install chromium)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def embed_js():
    """embed.js of the npm package @jupyter-widgets/html-manager@1 (the renderer for
    ipywidgets 8 state in static HTML), fetched with ``npm pack`` into a cache under
    tests/artifacts/ so later runs need no registry."""
    cached = ARTIFACTS / "cache" / "html-manager-1" / "embed.js"
    if not cached.exists():
        need(shutil.which("npm"), "npm is not installed (needed for the widget embed script)")
        work = cached.parent / "pack"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        out = subprocess.run(["npm", "pack", "@jupyter-widgets/html-manager@1", "--pack-destination", str(work)],
                             capture_output=True, text=True, timeout=120, check=True)
        tgz = work / out.stdout.strip().splitlines()[-1]
        with tarfile.open(tgz) as tar:
            member = tar.extractfile("package/dist/embed.js")
            cached.write_bytes(member.read())
        shutil.rmtree(work)
    return cached


class Notebook:
    """One notebook open in JupyterLab, its cells addressed by cell id."""

    def __init__(self, page, cell_ids):
        self.page = page
        self.ids = cell_ids

    def i(self, cell_id):
        return self.ids.index(cell_id)

    def cell(self, cell_id):
        return self.page.locator(".jp-Notebook .jp-Cell").nth(self.i(cell_id))

    def prompt(self, cell_id):
        return self.page.evaluate("i => nbq.prompt(i)", self.i(cell_id))

    def task(self, cell_id):
        return self.page.evaluate("i => nbq.task(i)", self.i(cell_id))

    def output_text(self, cell_id):
        return self.page.evaluate("i => nbq.outputText(i)", self.i(cell_id)).strip()

    def wait(self, js, arg=None, timeout=PAGE_TIMEOUT_MS):
        """Wait until ``js`` (a function of arg, with nbq helpers) is truthy; returns its value."""
        return self.page.wait_for_function(js, arg=arg, timeout=timeout, polling=50).json_value()

    def wait_task(self, cell_id, status, timeout=PAGE_TIMEOUT_MS):
        return self.wait("([i, s]) => { const t = nbq.task(i); return t && t.status === s && t; }",
                         [self.i(cell_id), status], timeout)

    def wait_done(self, cell_id, timeout=PAGE_TIMEOUT_MS):
        """Until the cell has run (its prompt shows a number)."""
        return self.wait("i => /^\\[\\d+\\]:$/.test(nbq.prompt(i) || '')", self.i(cell_id), timeout)

    def run_cell(self, cell_id):
        """Run one cell again (select it, Shift+Enter); wait until it has a new number."""
        before = self.prompt(cell_id)
        self.cell(cell_id).locator(".jp-InputPrompt").click()
        self.page.keyboard.press("Shift+Enter")
        self.wait("([i, b]) => { const p = nbq.prompt(i) || ''; return /^\\[\\d+\\]:$/.test(p) && p !== b; }",
                  [self.i(cell_id), before])

    def open_log(self, cell_id):
        """Expand the task widget's "Log" accordion and return the log's visible text."""
        widget = self.cell(cell_id).locator(".nbqueue-task").first
        out = widget.locator(".widget-output").first
        if not out.is_visible():  # open already: a second click would fold it
            widget.locator(".jupyter-widget-Collapse-header").first.click()
        out.wait_for(state="visible")
        return out.inner_text()

    def run_all(self):
        """Run > Run All Cells. A fresh page was seen to ignore the first menu click, so
        focus a cell first and try again until the last cell shows [*] or [n]."""
        page = self.page
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
        # fold the file browser away: more room for the notebook in the screenshots
        page.locator("#jp-left-stack").wait_for()
        page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current").click()
        page.locator("#jp-left-stack").wait_for(state="hidden")
        for _ in range(3):
            self.accept_kernel_dialog()
            page.locator(".jp-Notebook .jp-Cell .jp-InputPrompt").first.click()
            page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
            try:  # Run All queues every cell: the last one shows [*] (or has run)
                self.wait("() => { const p = document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt');"
                          " return p.length && /\\[(\\*|\\d+)\\]/.test(p[p.length - 1].textContent); }",
                          timeout=5_000)
                return
            except Exception:
                if not self.accept_kernel_dialog():
                    page.keyboard.press("Escape")
        raise AssertionError("Run All Cells did not start the notebook")

    def accept_kernel_dialog(self):
        """A fresh page sometimes asks "Select Kernel" (its choice already the test's
        kernel) while Run All starts, and stops the run: accept it. True if it did."""
        dialog = self.page.locator(".jp-Dialog")
        if not (dialog.count() and dialog.first.is_visible()):
            return False
        dialog.first.locator("button.jp-mod-accept").click()
        dialog.first.wait_for(state="hidden")
        return True

    def screenshot_whole(self, path):
        """Grow the viewport to the notebook's height, then take a screenshot of it all."""
        # The cells scroll inside .jp-WindowedPanel-outer (the page itself does not), and
        # JupyterLab pads the end of a notebook: measure down to the last cell's bottom.
        height = self.page.evaluate(
            "() => { const o = document.querySelector('.jp-NotebookPanel .jp-WindowedPanel-outer');"
            " const cells = o.querySelectorAll('.jp-Cell'); const box = o.getBoundingClientRect();"
            " const bottom = cells[cells.length - 1].getBoundingClientRect().bottom - box.top + o.scrollTop;"
            " return box.top + bottom + 80; }")
        self.page.set_viewport_size({"width": 1280, "height": int(min(max(height, 900), 8000))})
        # back to the top, then two animation frames: laid out and painted at the new size
        self.page.evaluate(
            "() => new Promise(r => { document.querySelector('.jp-NotebookPanel .jp-WindowedPanel-outer')"
            ".scrollTop = 0; requestAnimationFrame(() => requestAnimationFrame(r)); })")
        self.page.screenshot(path=path)


def with_one_retry(test_name, browser, lab, body):
    """Run ``body(page, attempt)`` on a fresh page; on any failure save a screenshot and try
    once more from scratch (new notebook copy, new kernel). Kernels are stopped after each
    attempt, so endless tasks of a failed attempt stop too."""
    for old in ARTIFACTS.glob(f"{test_name}-failed-attempt*.png"):
        old.unlink()
    for attempt in (1, 2):
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        context.set_default_timeout(PAGE_TIMEOUT_MS)
        context.add_init_script(PAGE_HELPERS)
        page = context.new_page()
        try:
            result = body(page, attempt)
            observe(f"{test_name}_attempts", attempt)
            return result
        except Exception as exc:
            with contextlib.suppress(Exception):
                page.screenshot(path=ARTIFACTS / f"{test_name}-failed-attempt{attempt}.png")
            if attempt == 2:
                raise
            print(f"{test_name}: attempt 1 failed, retrying once: {exc!r}", file=sys.stderr)
        finally:
            context.close()
            if lab is not None:
                with contextlib.suppress(Exception):
                    lab.stop_kernels()


# ---- tests ------------------------------------------------------------------------
def test_live_progress_log_and_cancel_in_jupyterlab(browser, lab):
    """tests/browser/live.ipynb in JupyterLab: the bar of a ~5 s task grows while the next
    cell is still running; the task ends succeeded with its prints in its own log; Cancel
    stops an endless task, clicked while another cell is busy and when the kernel is idle."""

    def body(page, attempt):
        url, ids = lab.add_notebook(LIVE, f"live-{attempt}")
        nb = Notebook(page, ids)
        # Note the subshell_id of each button click the page sends to the kernel (JupyterLab
        # 4.4+ sends comm messages over kernel subshells by default): part of the Cancel
        # observation below.
        clicks = []

        def on_frame(payload):
            text = payload if isinstance(payload, str) else payload.decode("latin-1")
            if '"msg_type":"comm_msg"' in text and '"event":"click"' in text:
                clicks.append(json.loads(re.search(r'"subshell_id":("[^"]*"|null)', text).group(1)))

        page.on("websocket", lambda ws: ws.on("framesent", on_frame))
        page.goto(url)
        t0 = time.monotonic()
        nb.run_all()

        # The widget renders under the submitting cell, in that cell's output area.
        nb.cell("submit").locator(".jp-OutputArea .nbqueue-task").wait_for()
        assert nb.cell("submit").locator(".nbqueue-task").count() == 1

        # The bar grows while the "busy" cell (a time.sleep loop) still runs: the submit
        # cell has its number and the busy one shows [*] (cells run in order, so it is the
        # one running, not just queued). Each reading takes the width and the prompts in
        # one go, so "still running" holds at the moment the width was read. Only readings
        # with a "done/total" count are taken: until the task's first progress report is
        # flushed to the store, the bar pulses (indeterminate), which is not growth.
        nb.wait_done("submit")
        grow = ("([task, busy, above]) => { const t = nbq.task(task); const p = nbq.prompt(busy);"
                " if (p !== '[*]:') return {prompt: p, width: t && t.width};"
                " return t && /\\d+\\/50/.test(t.counts) && t.width > above && t.width < 100"
                " && {prompt: p, width: t.width, counts: t.counts}; }")
        first = nb.wait(grow, [nb.i("submit"), nb.i("busy"), 0])
        assert first["prompt"] == "[*]:", f"the busy cell ended before the bar moved: {first}"
        nb.cell("submit").scroll_into_view_if_needed()
        page.screenshot(path=ARTIFACTS / "live-midrun.png")
        second = nb.wait(grow, [nb.i("submit"), nb.i("busy"), first["width"]])
        assert second["prompt"] == "[*]:", f"the busy cell ended before the bar grew: {first} {second}"
        assert second["width"] > first["width"]
        observe("bar_growth_while_busy_cell_runs", [first, second])

        # The log's title follows the log: open it while the task prints (a line a
        # second) and read both every 20 ms; a title behind its log is not left so.
        nb.open_log("submit")
        follow = page.evaluate("""i => new Promise(done => {
            const count = s => (s.match(/\\n/g) || []).length + (s && !s.endsWith('\\n') ? 1 : 0);
            const t0 = performance.now(); let behind = null, worst = 0, changes = 0, last = null;
            const tick = () => {
              const t = nbq.task(i), now = performance.now();
              const m = /\\((\\d+) lines?/.exec(t.logTitle || '');
              const titled = m ? +m[1] : 0, lines = count(t.log);
              if (lines !== last) { changes++; last = lines; }
              if (titled !== lines) { behind = behind === null ? now : behind; worst = Math.max(worst, now - behind); }
              else behind = null;
              if (t.status === 'running' && now - t0 < 3000) setTimeout(tick, 20);
              else done({worst_ms: Math.round(worst), changes, lines, title: t.logTitle});
            };
            tick();
        })""", nb.i("submit"))
        observe("log_title_behind_log_ms", follow)
        assert follow["changes"] >= 2, follow  # it saw the log grow while it read
        assert follow["worst_ms"] < 500, follow

        # Succeeded: full, green bar; no Cancel, no Retry; "Log (5 lines)".
        done = nb.wait_task("submit", "succeeded")
        assert done["width"] == 100 and "nbqueue-fill-success" in done["barClass"], done
        assert not done["cancelShown"] and not done["retryShown"], done
        assert "50/50" in done["text"]
        assert done["logTitle"] == "Log (5 lines)", done

        # The task's prints are in its widget's log, not in the cell that ran meanwhile.
        nb.wait_done("busy")
        log = nb.open_log("submit")
        assert "steady: step 0" in log and "steady: step 40" in log, log
        assert nb.output_text("busy") == "busy cell done: succeeded"
        for cell_id in ids:
            assert "steady:" not in nb.output_text(cell_id), f"a task print leaked into cell {cell_id}"

        # Cancel clicked while the next cell is busy (a time.sleep loop waiting up to 4 s for
        # the task to end). Whether the click is handled during that cell or only after it is
        # recorded, not asserted: it depends on how the kernel routes comm messages.
        nb.wait_task("blocker-busy", "running")
        nb.wait_done("blocker-busy")  # so the [*] below is busy-cancel running, not queued
        nb.wait("i => nbq.prompt(i) === '[*]:'", nb.i("busy-cancel"))
        clicked = time.monotonic()
        nb.cell("blocker-busy").get_by_role("button", name="Cancel").click()
        first_change = nb.wait(
            "([b, c]) => { const t = nbq.task(b); const p = nbq.prompt(c);"
            " return (t.status === 'cancelled' || p !== '[*]:') && {status: t.status, prompt: p}; }",
            [nb.i("blocker-busy"), nb.i("busy-cancel")], timeout=20_000)
        nb.wait_task("blocker-busy", "cancelled", timeout=20_000)
        busy_latency = time.monotonic() - clicked
        nb.wait_done("busy-cancel", timeout=20_000)
        kernel_saw = nb.output_text("busy-cancel")  # "b1 <status> after <s> s of this cell"
        handled_while_busy = kernel_saw.startswith("b1 cancelled")
        # the page and the kernel agree on when the click took effect
        assert handled_while_busy == (first_change["status"] == "cancelled"
                                      and first_change["prompt"] == "[*]:"), (kernel_saw, first_change)
        observe("cancel_while_busy", {"handled_while_cell_busy": handled_while_busy,
                                      "busy_cell_output": kernel_saw,
                                      "click_to_cancelled_badge_s": round(busy_latency, 2),
                                      "click_sent_with_subshell_id": clicks[-1] if clicks else None})

        # Cancel clicked when no cell runs: takes effect at once.
        nb.wait_done("blocker-idle", timeout=20_000)
        nb.wait_task("blocker-idle", "running")
        nb.wait("() => document.querySelector(\".jp-Notebook-ExecutionIndicator[data-status='idle']\")")
        clicked = time.monotonic()
        nb.cell("blocker-idle").get_by_role("button", name="Cancel").click()
        cancelled = nb.wait_task("blocker-idle", "cancelled", timeout=10_000)
        idle_latency = time.monotonic() - clicked
        assert not cancelled["cancelShown"] and cancelled["retryShown"], cancelled
        assert "cancelled while running" in cancelled["text"]
        assert idle_latency < 5, f"Cancel on an idle kernel took {idle_latency:.1f} s"
        observe("cancel_while_idle_s", round(idle_latency, 2))
        observe("live_notebook_s", round(time.monotonic() - t0, 1))
        nb.screenshot_whole(ARTIFACTS / "live-final.png")

    with_one_retry("live", browser, lab, body)


def test_no_total_cancelling_and_retry_in_jupyterlab(browser, lab):
    """tests/browser/retry.ipynb in JupyterLab: a task with no total shows a full bar with
    moving stripes and no fraction; Cancel on a task that does not check for it shows
    "cancelling" at once, then cancelled, with Retry instead of Cancel; Retry on a failed
    task shows the new task's widget inside the old one ("retried as ...") and it
    succeeds; running a cell again closes the models of the widget it showed."""

    def body(page, attempt):
        url, ids = lab.add_notebook(RETRY, f"retry-{attempt}")
        nb = Notebook(page, ids)
        page.goto(url)
        nb.run_all()

        # No total: striped, moving, full width, and no fraction anywhere.
        running = nb.wait("i => { const t = nbq.task(i); return t && t.status === 'running'"
                          " && t.striped && t.moving && t; }", nb.i("stubborn"))
        assert running["width"] == 100, running
        assert "/" not in running["counts"] and "%" not in running["text"], running
        assert running["cancelShown"] and not running["retryShown"], running
        widget = nb.cell("stubborn").locator(".nbqueue-task")
        widget.scroll_into_view_if_needed()
        widget.screenshot(path=ARTIFACTS / "indeterminate.png")

        # Cancel, clicked once every cell has run (a click waits for a busy kernel):
        # "cancelling" as soon as the widget refreshes, while the task still runs.
        nb.wait_done("check")
        assert nb.task("stubborn")["status"] == "running"
        clicked = time.monotonic()
        nb.cell("stubborn").get_by_role("button", name="Cancel").click()
        cancelling = nb.wait_task("stubborn", "cancelling", timeout=5_000)
        latency = time.monotonic() - clicked
        assert cancelling["cancelShown"] and cancelling["cancelDisabled"], cancelling
        assert "nbqueue-fill-warning" in cancelling["barClass"], cancelling
        widget.screenshot(path=ARTIFACTS / "cancelling.png")
        observe("click_to_cancelling_badge_s", round(latency, 2))
        assert latency < 2, f"the cancelling badge took {latency:.1f} s"
        cancelled = nb.wait_task("stubborn", "cancelled", timeout=20_000)
        assert not cancelled["cancelShown"] and cancelled["retryShown"], cancelled

        # Retry: the failed task's widget offers it; the new task shows inside, succeeds.
        failed = nb.wait_task("flaky", "failed")
        assert failed["retryShown"] and not failed["cancelShown"], failed
        assert failed["logTitle"] == "Log (1 line)", failed
        flaky = nb.cell("flaky").locator(".nbqueue-task").first
        flaky.scroll_into_view_if_needed()
        flaky.screenshot(path=ARTIFACTS / "retry-button.png")
        nb.cell("flaky").get_by_role("button", name="Retry").click()
        retried = nb.wait("i => { const t = nbq.task(i); return t && t.inner"
                          " && t.inner.status === 'succeeded' && t; }", nb.i("flaky"), timeout=20_000)
        assert retried["status"] == "failed" and not retried["retryShown"], retried
        new = retried["inner"]
        assert "retried as" in retried["text"] and "retry of" in new["text"], retried
        assert new["width"] == 100 and "nbqueue-fill-success" in new["barClass"], new
        assert new["logTitle"] == "Log (1 line)" and "flaky: call 2" in new["log"], new
        flaky.screenshot(path=ARTIFACTS / "retry-succeeded.png")

        # Running a cell again clears its output: the models of the widget it showed
        # are closed in the kernel; the other views stay.
        nb.run_cell("show")
        nb.wait_task("show", "succeeded")
        nb.run_cell("check")
        assert nb.output_text("check") == ("first closed: True True True | last closed: False"
                                           " | flaky's view closed: False")
        errors = page.locator(".jp-Notebook .jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        assert errors.count() == 0, errors.all_inner_texts()
        nb.screenshot_whole(ARTIFACTS / "retry-final.png")

    with_one_retry("retry", browser, lab, body)


def test_quickstart_in_jupyterlab(browser, lab):
    """notebooks/quickstart.ipynb, Run All in JupyterLab: every widget's final state on the
    page, the failing task's error, the task logs, %%background and the dashboard."""

    def body(page, attempt):
        url, ids = lab.add_notebook(QUICKSTART, f"quickstart-{attempt}")
        nb = Notebook(page, ids)
        page.goto(url)
        t0 = time.monotonic()
        nb.run_all()
        nb.wait_done("wait", timeout=60_000)  # the last cell: %nbqueue wait
        observe("quickstart_notebook_s", round(time.monotonic() - t0, 1))

        errors = page.locator(".jp-Notebook .jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        assert errors.count() == 0, errors.all_inner_texts()

        crunch = nb.wait_task("submit", "succeeded")
        assert crunch["width"] == 100 and "nbqueue-fill-success" in crunch["barClass"], crunch
        assert "crunch" in crunch["text"] and "100/100" in crunch["text"]
        log = nb.open_log("submit")
        assert "crunch: step 0" in log and "crunch: step 80" in log, log
        # crunch printed while the following cells ran; none of it may be there
        assert nb.output_text("meanwhile") == "this cell ran while crunch was working"
        for cell_id in ids:
            assert "crunch: step" not in nb.output_text(cell_id), f"a task print leaked into cell {cell_id}"

        boom = nb.wait_task("failing", "failed")
        assert "nbqueue-fill-danger" in boom["barClass"], boom
        assert boom["retryShown"] and not boom["cancelShown"], boom
        error = nb.cell("failing").locator(".nbqueue-error")
        assert "ValueError: bad input: expected a positive number" in error.inner_text()
        assert "Traceback" in error.inner_text()
        assert "about to fail" in nb.open_log("failing")

        assert "attempt 3" in nb.wait_task("retry", "succeeded")["text"]
        nb.wait_task("cancel", "cancelled")

        summing = nb.wait_task("background", "succeeded")
        assert "summing" in summing["text"]
        assert "summing in the background" in nb.open_log("background")
        assert "summing in the background" not in nb.output_text("background")
        assert nb.output_text("bg-result") == "background result: 333283335000 answer = 333283335000"

        # %nbqueue: the dashboard of the latest queue, q ("quickstart"); the %%background
        # cell ran on the kernel's own "background" queue, so "summing" is not listed.
        # It refreshes once a second: wait until its rows show no live task.
        dashboard = nb.cell("dashboard").locator(".nbqueue-dashboard")
        dashboard.wait_for()
        nb.wait("i => { const d = nbq.cell(i).querySelector('.nbqueue-dashboard'); return d &&"
                " !d.querySelector('.nbqueue-running, .nbqueue-pending, .nbqueue-retrying'); }",
                nb.i("dashboard"))
        table = dashboard.inner_text()
        assert "queue quickstart" in table and "7 tasks" in table, table
        for name in ("crunch", "flaky", "boom", "forever"):
            assert name in table, table
        for state in ("succeeded", "failed", "cancelled"):
            assert dashboard.locator(f".nbqueue-state.nbqueue-{state}").count() >= 1, state
        nb.screenshot_whole(ARTIFACTS / "quickstart-final.png")

    with_one_retry("quickstart", browser, lab, body)


def test_static_html_export_renders_widgets(browser, kernelspec_dir, embed_js, tmp_path, monkeypatch):
    """quickstart executed by nbclient with the widget state stored, exported by nbconvert
    to HTML with the offline html-manager embed.js, rendered by Chromium from file://."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    need(_importable("nbconvert"), "nbconvert is not installed")
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(filter(None, [str(kernelspec_dir),
                                                                     os.environ.get("JUPYTER_PATH")])))
    export_dir = ARTIFACTS / "export"  # the last export is kept, to open by hand

    def body(page, attempt):
        # the retry executes again too: the saved state is what is under test
        work = tmp_path / f"attempt{attempt}"
        ids = copy_notebook(QUICKSTART, work / "quickstart.ipynb")
        nb = nbformat.read(work / "quickstart.ipynb", as_version=4)
        t0 = time.monotonic()
        nbclient.NotebookClient(nb, timeout=120, kernel_name=KERNEL_NAME, store_widget_state=True,
                                resources={"metadata": {"path": str(work)}}).execute()
        nbformat.write(nb, work / "quickstart.ipynb")
        # The default export loads its widget renderer from a CDN (unreachable offline):
        # point it at embed.js next to the HTML instead, and drop require.js and MathJax.
        subprocess.run([sys.executable, "-m", "nbconvert", "--to", "html", "quickstart.ipynb",
                        "--HTMLExporter.widget_renderer_url=embed.js", "--HTMLExporter.require_js_url=",
                        "--HTMLExporter.mathjax_url="],
                       cwd=work, check=True, capture_output=True, timeout=120)
        shutil.copy(embed_js, work / "embed.js")
        shutil.rmtree(export_dir, ignore_errors=True)
        shutil.copytree(work, export_dir, ignore=shutil.ignore_patterns(".nbqueue"))
        observe("export_execute_and_convert_s", round(time.monotonic() - t0, 1))

        page.goto((export_dir / "quickstart.html").as_uri())
        submit = ids.index("submit")
        # rendered once html-manager has built the views from the saved state
        crunch = page.wait_for_function("i => { const t = nbq.task(i); return t && t.width !== null && t; }",
                                        arg=submit).json_value()
        assert crunch["width"] == 100 and "nbqueue-fill-success" in crunch["barClass"], crunch
        assert crunch["status"] == "succeeded" and "100/100" in crunch["text"]
        assert not crunch["cancelShown"] and crunch["logTitle"] == "Log (5 lines, 1 display)", crunch
        # the saved log: expand the accordion, as a reader would, and read what shows
        widget = page.locator(".jp-Notebook .jp-Cell").nth(submit).locator(".nbqueue-task")
        widget.locator(".jupyter-widget-Collapse-header").click()
        log = widget.locator(".widget-output")
        log.wait_for(state="visible")
        assert "crunch: step 0" in log.inner_text() and "crunch: step 80" in log.inner_text()
        boom = page.evaluate("i => nbq.task(i)", ids.index("failing"))
        assert boom["status"] == "failed" and "nbqueue-fill-danger" in boom["barClass"]
        assert boom["retryShown"] and boom["logTitle"] == "Log (1 line)", boom
        assert "bad input: expected a positive number" in boom["text"] and "about to fail" in boom["log"]
        # The saved state is the end state (%nbqueue wait settles the displays before its
        # cell ends): no task widget left pending/running, and the dashboard, displayed while
        # crunch.map's tasks ran, shows them finished.
        live = page.locator(".nbqueue-task .nbqueue-pending, .nbqueue-task .nbqueue-running,"
                            " .nbqueue-task .nbqueue-retrying")
        assert live.count() == 0, live.all_inner_texts()
        dashboard = page.locator(".jp-Notebook .jp-Cell").nth(ids.index("dashboard")).locator(".nbqueue-dashboard")
        assert "7 tasks: 5 succeeded, 1 failed, 1 cancelled" in dashboard.inner_text()
        assert dashboard.locator(".nbqueue-running, .nbqueue-pending").count() == 0
        assert dashboard.locator("button:enabled").count() == 0  # no Cancel on a finished task
        page.screenshot(path=ARTIFACTS / "export.png", full_page=True)

    with_one_retry("export", browser, None, body)

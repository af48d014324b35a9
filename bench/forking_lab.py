"""Item 13: a new notebook in JupyterLab, in Chromium: the `sessionpool-fork` kernelspec against the stock `python3`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _common import STATS_HEADERS, Section, Stats, Target, free_port, stats_rows

from jupyter_sessionpool.forking.kernelspec import install_kernelspec

METHOD = """\
One `jupyter lab` (127.0.0.1, an isolated configuration, the venv's stock `python3` kernelspec,
and `python3-fast` written by `jupyter-sessionpool kernelspec install`) and one headless
Chromium page (Playwright) with the app loaded. A sample runs JupyterLab's own command
`notebook:create-new` with the kernelspec's name and is timed until the new notebook's
kernel is connected and idle, as the UI shows it (the check the browser tests use, polled
every animation frame). The notebook's kernel is then shut down and the notebook closed
(untimed). The two kernelspecs interleaved, {reps} rounds after {warmup} warm-up (which also
starts the fork template)."""

CHROMIUM = "/usr/bin/chromium"
KERNEL_IDLE = """() => {
    const kernel = window.jupyterapp.shell.currentWidget?.sessionContext?.session?.kernel;
    return kernel?.connectionStatus === 'connected' && kernel.status === 'idle';
}"""
CLOSE = """async () => {
    const widget = window.jupyterapp.shell.currentWidget;
    await widget.sessionContext.shutdown();
    widget.dispose();
}"""


def lab(home: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A JupyterLab on a free port, with its own config, runtime, settings and kernelspecs under ``home``."""
    port = free_port()
    install_kernelspec("python3-fast", display_name="Python 3 (fast start)", prefix=str(home / "prefix"))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(home / "ws"),
           "IPYTHONDIR": str(home / "ipython"), "JUPYTER_PATH": str(home / "prefix" / "share" / "jupyter")}
    (home / "root").mkdir()
    cmd = [str(Path(sys.executable).with_name("jupyter-lab")), "--no-browser", "--allow-root", "--IdentityProvider.token=",
           "--ip=127.0.0.1", f"--port={port}", f"--ServerApp.root_dir={home / 'root'}", "--expose-app-in-browser",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    log = open(home / "lab.log", "wb")  # noqa: SIM115 - the server's, closed with it
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/kernelspecs", timeout=5) as response:
                if "python3-fast" in json.loads(response.read())["kernelspecs"]:
                    return server, url
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"jupyter lab did not start: {(home / 'lab.log').read_text()[-2000:]}")
        time.sleep(0.2)  # polling a port: there is no event to wait on


def samples(url: str, reps: int, warmup: int) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright

    out: dict[str, list[float]] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        page = browser.new_page()
        page.goto(f"{url}/lab?reset")
        page.wait_for_function("() => window.jupyterapp !== undefined")
        page.evaluate("() => window.jupyterapp.restored.then(() => null)")
        names = {"python3 (stock, spawned)": "python3", "python3-fast (sessionpool-fork)": "python3-fast"}
        labels = list(names)
        for i in range(warmup + reps):
            for label in labels[i % 2:] + labels[:i % 2]:
                t0 = time.perf_counter()
                page.evaluate("name => window.jupyterapp.commands.execute('notebook:create-new', {kernelName: name})"
                              ".then(() => null)", names[label])
                page.wait_for_function(KERNEL_IDLE, polling="raf", timeout=120_000)
                elapsed = time.perf_counter() - t0
                page.evaluate(CLOSE)
                if i >= warmup:
                    out.setdefault(label, []).append(elapsed)
        browser.close()
    return out


async def measure(quick: bool) -> Section:
    reps, warmup = (3, 1) if quick else (12, 2)
    section = Section("forking_lab", "15. A new notebook in JupyterLab: forked kernel against spawned (issue 21)",
                      METHOD.format(reps=reps, warmup=warmup))
    home = Path(tempfile.mkdtemp(prefix="jsp-forklab-"))
    server, url = lab(home)
    try:
        got = await asyncio.to_thread(samples, url, reps, warmup)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    section.raw = got
    section.table(STATS_HEADERS, stats_rows(got, "python3 (stock, spawned)"))
    p50 = {k: Stats.of(v).p50 for k, v in got.items()}
    section.targets.append(Target(
        "new notebook to idle kernel in JupyterLab: sessionpool-fork / stock python3 (p50)",
        p50["python3-fast (sessionpool-fork)"] / p50["python3 (stock, spawned)"], 0.5, "x",
        why_missed=f"the fork saved {(p50['python3 (stock, spawned)'] - p50['python3-fast (sessionpool-fork)']) * 1000:.0f} ms, "
        "the kernel's start; the rest is JupyterLab's and Jupyter Server's own path to an idle kernel, the same for "
        "both: the new file, the session, the kernel's websocket and the kernel_info nudges"))
    return section

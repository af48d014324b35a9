"""The extension in a real ``jupyter lab`` and ``jupyter notebook`` (Notebook 7) with headless
Chromium: it loads without console errors, the panel opens from the command palette and
follows the active notebook's pool live, its buttons (named for screen readers too) act on
it, release and restart ask first, and all of it survives a restart of the notebook's kernel. In
JupyterLab the status-bar item follows notebook switches and page reloads. Saves the panel
screenshot used in the docs (docs/panel.png, from JupyterLab).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect

from .conftest import JupyterServer
from .helpers import (
    KERNEL_GONE,
    cell,
    current_notebook,
    open_notebook,
    open_panel_from_palette,
    output,
    run_cell,
    wait_kernel_idle,
    wait_workspace_saved,
)

pytestmark = pytest.mark.browser

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "panel.png"
POOL_START = 90_000  # ms: a pool kernel starting on a loaded 2-core machine


def status_item(page: Page) -> Locator:
    return page.locator("#jupyter-sessionpool-status")


def open_panel_tab(page: Page) -> Locator:
    """Click the panel's tab in JupyterLab's right side bar (unless it is open already)."""
    tab = page.locator(".jp-SideBar [data-id='jupyter-sessionpool-panel']")
    expect(tab).to_be_visible()
    if "lm-mod-current" not in (tab.get_attribute("class") or ""):
        tab.click()
    panel = page.locator("#jupyter-sessionpool-panel")
    expect(panel).to_be_visible()
    return panel


def row(panel: Locator, session: str, state: str | None = None) -> Locator:
    """The panel's card for ``session``'s kernel (in ``state``, if given)."""
    selector = f".jsp-Kernel[data-session='{session}']" + (f"[data-state='{state}']" if state else "")
    return panel.locator(selector)


def confirm_action(page: Page, panel: Locator, session: str, action: str) -> None:
    """Release or restart ``session`` from the panel: the dialog asks first; Cancel keeps it, then it goes.

    Either way the session's kernel leaves (a restarted session gets a fresh one on its next cell).
    """
    label = action.capitalize()
    button = panel.get_by_role("button", name=f"{label} session {session}")
    button.click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text(f"{label} session {session}?")
    expect(dialog).to_contain_text(f"Every variable and import of session {session} is lost")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_have_count(0)
    expect(row(panel, session, "idle")).to_be_visible()
    button.click()
    page.get_by_role("dialog").get_by_role("button", name=label).click()
    expect(row(panel, session)).to_have_count(0, timeout=KERNEL_GONE)  # the card goes once the kernel is gone


def test_loads_without_console_errors_and_opens_from_the_palette(
    page: Page, server: JupyterServer, console_errors: list[str]
) -> None:
    open_notebook(page, server, "plain.ipynb", ["1 + 1", "%load_ext jupyter_sessionpool"])
    panel = open_panel_from_palette(page)
    expect(panel).to_contain_text("plain.ipynb: no pool in this kernel")
    run_cell(page, 0)
    expect(output(page, 0)).to_contain_text("2")
    expect(status_item(page)).to_be_hidden()

    run_cell(page, 1)  # the extension, but no pool until the first %%pool cell
    expect(panel).to_contain_text("plain.ipynb: no pool yet")
    if server.app == "lab":
        expect(status_item(page)).to_have_text("No pool")
    else:
        expect(status_item(page)).to_have_count(0)  # Notebook 7 has no status bar
    assert console_errors == []


def test_sessions_live_background_output_and_panel_actions(
    page: Page, server: JupyterServer, console_errors: list[str]
) -> None:
    open_notebook(
        page,
        server,
        "pool.ipynb",
        [
            "%load_ext jupyter_sessionpool",
            "%%pool session=a\nx = 1\nprint('a ready')",
            "%%pool session=b\nprint('b ready')",
            "%%pool session=a --bg\nimport time\nprint('nap started', flush=True)\ntime.sleep(4)\nprint('nap done')",
            "%%pool session=b\nimport time\nprint('long started', flush=True)\ntime.sleep(300)",
            "%%pool session=b\nprint('b fresh:', 'time' not in dir())",
        ],
    )
    lab = server.app == "lab"
    panel = open_panel_from_palette(page)
    status = status_item(page)
    for index in range(3):
        run_cell(page, index)
    expect(output(page, 2)).to_contain_text("b ready", timeout=POOL_START)
    if lab:
        expect(status).to_have_text("Pool 0/4 busy")
    expect(row(panel, "a", "idle")).to_be_visible()
    expect(row(panel, "b", "idle")).to_be_visible()
    expect(row(panel, "a").locator(".jsp-Kernel-runs")).to_have_text("1 run")
    expect(row(panel, "a").locator(".jsp-Kernel-memory")).to_have_text(re.compile(r"^\d+\.\d MiB$"))
    expect(row(panel, "a").get_by_role("button", name="Interrupt session a")).to_be_disabled()  # idle

    # a background cell on a, then a long foreground cell on b: both busy at once
    run_cell(page, 3)
    expect(row(panel, "a", "busy")).to_be_visible()
    run_cell(page, 4)
    expect(output(page, 4)).to_contain_text("long started")
    expect(row(panel, "b", "busy")).to_be_visible()
    expect(row(panel, "b").locator(".jsp-Kernel-busy")).to_have_text(re.compile(r"^busy for [1-9]\d*\.\d s$"))  # ticks
    if lab:
        expect(status).to_have_text(re.compile(r"^Pool [12]/4 busy$"))
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT))

    # the background cell finishes while b's cell runs: its output lands in its own cell, once
    expect(row(panel, "a", "idle")).to_be_visible(timeout=30_000)
    expect(output(page, 3)).to_contain_text("nap done")
    outputs = current_notebook(page).locator(".jp-OutputArea-output")
    expect(outputs.filter(has_text="nap started")).to_have_count(1)
    expect(outputs.filter(has_text="nap done")).to_have_count(1)
    expect(cell(page, 4).locator(".jp-InputArea-prompt")).to_have_text("[*]:")
    expect(output(page, 4)).not_to_contain_text("nap")
    if lab:
        expect(status).to_have_text("Pool 1/4 busy")

    # the panel's interrupt button stops the long foreground cell (comms run on a subshell)
    panel.get_by_role("button", name="Interrupt session b").click()
    expect(output(page, 4)).to_contain_text("KeyboardInterrupt", timeout=30_000)
    expect(row(panel, "b", "idle")).to_be_visible()

    # release asks first, then removes the session and its kernel
    confirm_action(page, panel, "a", "release")
    expect(row(panel, "b")).to_have_count(1)

    # restart asks first too; b's next cell then runs on a fresh kernel, without b's state
    confirm_action(page, panel, "b", "restart")
    run_cell(page, 5)
    expect(output(page, 5)).to_contain_text("b fresh: True", timeout=POOL_START)
    expect(row(panel, "b").locator(".jsp-Kernel-runs")).to_have_text("1 run")
    expect(panel.locator(".jsp-Panel-error")).to_have_text("")
    assert console_errors == []


def test_a_kernel_restart_leaves_panel_and_widget_working(
    page: Page, server: JupyterServer, console_errors: list[str]
) -> None:
    cells = ["%load_ext jupyter_sessionpool", "%%pool session=s\nprint('s ready')", "%pool status",
             "import os, threading\nthreading.Timer(1, os._exit, (1,)).start()  # dies after the cell"]
    open_notebook(page, server, "restart.ipynb", cells)
    panel = open_panel_from_palette(page)
    for index in range(3):
        run_cell(page, index)
    expect(output(page, 1)).to_contain_text("s ready", timeout=POOL_START)
    expect(row(panel, "s", "idle")).to_be_visible()
    expect(output(page, 2).locator(".jsp-pool-widget .jsp-kernel[data-session='s']")).to_be_visible()

    # a restart drops the pool (the kernel shuts it down on its way out) and the comm
    restarted = page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.restartKernel()"
                              ".then(() => 'ok', error => String(error))")
    assert restarted == "ok"
    expect(row(panel, "s")).to_have_count(0, timeout=KERNEL_GONE)
    # the old kernel's widget says it is not live, once, rather than a broken icon per part
    widget = output(page, 2).locator(".jsp-pool-widget")
    expect(widget).to_have_class(re.compile(r"\bjupyter-widgets-disconnected\b"))
    assert "Run %pool status for a live one" in widget.evaluate("el => getComputedStyle(el, '::before').content")
    icons = widget.evaluate("el => [...el.querySelectorAll('.jupyter-widgets-disconnected')]"
                            ".map(part => getComputedStyle(part, '::before').content)")
    assert icons and set(icons) == {"none"}
    expect(panel).to_contain_text("restart.ipynb: no pool in this kernel")
    wait_kernel_idle(page, server)
    run_cell(page, 0)
    expect(panel).to_contain_text("restart.ipynb: no pool yet")

    # A kernel that dies is restarted by the server, with no kernel change for the panel to
    # see. This one loads the extension at start, before the frontend listens to it again,
    # so the panel must look for the extension by itself.
    startup = server.ipython_dir / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    (startup / "00-jupyter-sessionpool.py").write_text("get_ipython().run_line_magic('load_ext', 'jupyter_sessionpool')\n")
    try:
        run_cell(page, 3)
        dialog = page.get_by_role("dialog")
        expect(dialog).to_contain_text("restart automatically", timeout=60_000)
        dialog.get_by_role("button").last.click()
        expect(panel).to_contain_text("restart.ipynb: no pool yet", timeout=60_000)
    finally:
        (startup / "00-jupyter-sessionpool.py").unlink()

    # the new pool shows in the panel, and the panel acts on it
    run_cell(page, 1)
    expect(row(panel, "s", "idle")).to_be_visible(timeout=POOL_START)
    confirm_action(page, panel, "s", "release")
    expect(panel.locator(".jsp-Panel-empty")).to_have_text(
        "No kernels running: sessions released; the next %%pool cell starts one."
    )
    assert console_errors == []  # no "Comm not found" from the old kernel's widget


@pytest.mark.parametrize("server", ["lab"], indirect=True)
def test_status_follows_notebook_switches_and_reloads(page: Page, server: JupyterServer) -> None:
    cells = ["%load_ext jupyter_sessionpool", "%%pool session=s\nprint('s ready')"]
    open_notebook(page, server, "with_pool.ipynb", cells)
    run_cell(page, 0)
    run_cell(page, 1)
    expect(output(page, 1)).to_contain_text("s ready", timeout=POOL_START)
    status = status_item(page)
    expect(status).to_have_text("Pool 0/4 busy")

    open_notebook(page, server, "without_pool.ipynb", ["1 + 1"])
    expect(status).to_be_hidden()
    page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab", has_text="with_pool.ipynb").click()
    expect(status).to_have_text("Pool 0/4 busy")
    panel = open_panel_tab(page)
    expect(row(panel, "s", "idle")).to_be_visible()

    # a reloaded page finds the running pool again (through comm_info, without %load_ext); the
    # reload restores the saved workspace, so it must hold the tab switch (under load it did not yet)
    wait_workspace_saved(page, "with_pool.ipynb")
    page.reload()
    expect(status).to_have_text("Pool 0/4 busy", timeout=60_000)
    panel = open_panel_tab(page)
    expect(row(panel, "s", "idle")).to_be_visible()

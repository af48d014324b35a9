"""The JupyterLab extension in a real ``jupyter lab`` and headless Chromium: the status-bar
item and the side panel follow the active notebook's pool, live, and the panel's buttons act
on it. Saves the panel screenshot used in the docs (docs/panel.png).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect

from .helpers import cell, open_notebook, output, run_cell

pytestmark = pytest.mark.browser

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "panel.png"
POOL_START = 90_000  # ms: a pool kernel starting on a loaded 2-core machine


def status_item(page: Page) -> Locator:
    return page.locator("#jupyter-sessionpool-status")


def open_panel(page: Page) -> Locator:
    """Click the panel's tab in the right side bar (unless it is open already); the panel."""
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


def test_extension_loads_without_console_errors_and_says_when_there_is_no_pool(
    page: Page, lab_url: str, lab_root: Path, console_errors: list[str]
) -> None:
    open_notebook(page, lab_url, lab_root, "plain.ipynb", ["1 + 1", "%load_ext jupyter_sessionpool"])
    panel = open_panel(page)
    expect(panel).to_contain_text("plain.ipynb: no pool in this kernel")
    run_cell(page, 0)
    expect(output(page, 0)).to_contain_text("2")
    expect(status_item(page)).to_be_hidden()

    run_cell(page, 1)  # the extension, but no pool until the first %%pool cell
    expect(status_item(page)).to_have_text("No pool")
    expect(panel).to_contain_text("plain.ipynb: no pool yet")
    assert console_errors == []


def test_sessions_live_background_output_and_panel_actions(
    page: Page, lab_url: str, lab_root: Path, console_errors: list[str]
) -> None:
    open_notebook(
        page,
        lab_url,
        lab_root,
        "pool.ipynb",
        [
            "%load_ext jupyter_sessionpool",
            "%%pool session=a\nx = 1\nprint('a ready')",
            "%%pool session=b\nprint('b ready')",
            "%%pool session=a --bg\nimport time\nprint('nap started', flush=True)\ntime.sleep(4)\nprint('nap done')",
            "%%pool session=b\nimport time\nprint('long started', flush=True)\ntime.sleep(300)",
        ],
    )
    panel = open_panel(page)
    status = status_item(page)
    for index in range(3):
        run_cell(page, index)
    expect(output(page, 2)).to_contain_text("b ready", timeout=POOL_START)
    expect(status).to_have_text("Pool 0/4 busy")
    expect(row(panel, "a", "idle")).to_be_visible()
    expect(row(panel, "b", "idle")).to_be_visible()
    expect(row(panel, "a").locator(".jsp-Kernel-runs")).to_have_text("1 run")
    expect(row(panel, "a").locator(".jsp-Kernel-memory")).to_have_text(re.compile(r"^\d+\.\d MiB$"))

    # a background cell on a, then a long foreground cell on b: both busy at once
    run_cell(page, 3)
    expect(row(panel, "a", "busy")).to_be_visible()
    run_cell(page, 4)
    expect(output(page, 4)).to_contain_text("long started")
    expect(row(panel, "b", "busy")).to_be_visible()
    expect(row(panel, "b").locator(".jsp-Kernel-busy")).to_have_text(re.compile(r"^busy for [1-9]\d*\.\d s$"))  # ticks
    expect(status).to_have_text(re.compile(r"^Pool [12]/4 busy$"))
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))

    # the background cell finishes while b's cell runs: its output lands in its own cell
    expect(row(panel, "a", "idle")).to_be_visible(timeout=30_000)
    expect(output(page, 3)).to_contain_text("nap done")
    expect(status).to_have_text("Pool 1/4 busy")
    expect(cell(page, 4).locator(".jp-InputArea-prompt")).to_have_text("[*]:")
    expect(output(page, 4)).not_to_contain_text("nap")

    # the panel's interrupt button stops the long foreground cell (comms run on a subshell)
    panel.get_by_role("button", name="Interrupt session b").click()
    expect(output(page, 4)).to_contain_text("KeyboardInterrupt", timeout=30_000)
    expect(row(panel, "b", "idle")).to_be_visible()
    expect(status).to_have_text("Pool 0/4 busy")

    # release removes the session and its kernel
    panel.get_by_role("button", name="Release session a").click()
    expect(row(panel, "a")).to_have_count(0)
    expect(row(panel, "b")).to_have_count(1)
    expect(panel.locator(".jsp-Panel-error")).to_have_text("")
    assert console_errors == []


def test_status_follows_notebook_switches_and_kernel_restarts(page: Page, lab_url: str, lab_root: Path) -> None:
    cells = ["%load_ext jupyter_sessionpool", "%%pool session=s\nprint('s ready')"]
    open_notebook(page, lab_url, lab_root, "with_pool.ipynb", cells)
    run_cell(page, 0)
    run_cell(page, 1)
    expect(output(page, 1)).to_contain_text("s ready", timeout=POOL_START)
    status = status_item(page)
    expect(status).to_have_text("Pool 0/4 busy")

    open_notebook(page, lab_url, lab_root, "without_pool.ipynb", ["1 + 1"])
    expect(status).to_be_hidden()
    page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab", has_text="with_pool.ipynb").click()
    expect(status).to_have_text("Pool 0/4 busy")
    panel = open_panel(page)
    expect(row(panel, "s", "idle")).to_be_visible()

    # a reloaded page finds the running pool again (through comm_info, without %load_ext)
    page.reload()
    expect(status).to_have_text("Pool 0/4 busy", timeout=60_000)
    panel = open_panel(page)
    expect(row(panel, "s", "idle")).to_be_visible()

    # a kernel restart drops the pool (and its kernels): the item hides until %load_ext again
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.restartKernel()")
    expect(status).to_be_hidden()
    expect(panel).to_contain_text("with_pool.ipynb: no pool in this kernel")
    expect(page.locator("#jp-main-statusbar")).to_contain_text("| Idle", timeout=60_000)
    run_cell(page, 0)
    expect(status).to_have_text("No pool")

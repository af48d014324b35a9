"""The pool widget in a real JupyterLab and Notebook 7 with Chromium: live through background
cells, with the actions in each kernel's row: interrupt stops a running cell, release asks
for a confirming click. Saves the screenshot used in the docs (docs/widget.png, from
JupyterLab).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect

from .conftest import JupyterServer
from .helpers import KERNEL_GONE, current_notebook, open_notebook, output, run_cell

pytestmark = pytest.mark.browser

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "widget.png"
TICKED = re.compile(r"^([2-9]|[1-9][0-9]+) s$")  # busy for at least 2 s: the figure ticked
CELLS = [
    "%load_ext jupyter_sessionpool",
    "%pool status",
    "%%pool session=nap --bg\nimport time\nprint('napping', flush=True)\ntime.sleep(4)\nprint('awake')",
    "%%pool session=long --bg\nimport time\nprint('long cell started', flush=True)\ntime.sleep(300)",
]


def test_widget_follows_background_cells_and_acts_from_each_row(
    page: Page, server: JupyterServer, console_errors: list[str]
) -> None:
    open_notebook(page, server, "widget.ipynb", CELLS)
    run_cell(page, 0)
    run_cell(page, 1)
    widget = output(page, 1).locator(".jsp-pool-widget")
    expect(widget).to_be_visible(timeout=30_000)
    expect(widget).to_contain_text("no kernels yet: the first %%pool cell starts one")

    def kernel(session: str, state: str | None = None) -> Locator:
        """The widget's row for ``session``'s kernel: its cells and its buttons."""
        cells = f".jsp-kernel[data-session='{session}']" + (f"[data-state='{state}']" if state else "")
        return widget.locator(".jsp-kernel-row").filter(has=page.locator(cells))

    # a background cell: its session shows busy, with a busy time that ticks, then idle
    run_cell(page, 2)
    busy = kernel("nap", "busy")
    expect(busy).to_be_visible(timeout=60_000)
    expect(busy.locator(".jsp-col-busy")).to_have_text(TICKED, timeout=10_000)
    expect(kernel("nap", "idle")).to_be_visible(timeout=30_000)
    expect(output(page, 2)).to_contain_text("awake")
    expect(kernel("nap", "idle").locator(".jsp-col-runs")).to_have_text("1")
    expect(kernel("nap", "idle").locator(".jsp-col-busy")).to_have_text("–")  # empty cells show a dash
    expect(kernel("nap").get_by_role("button", name="Interrupt")).to_be_disabled()

    # a long background cell, stopped by the interrupt button in its row
    run_cell(page, 3)
    expect(output(page, 3)).to_contain_text("long cell started", timeout=60_000)
    expect(kernel("long", "busy").locator(".jsp-col-busy")).to_have_text(TICKED, timeout=10_000)
    if server.app == "lab":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        current_notebook(page).screenshot(path=str(SCREENSHOT))
    kernel("long").get_by_role("button", name="Interrupt").click()
    expect(kernel("long", "idle")).to_be_visible(timeout=30_000)
    expect(output(page, 3)).to_contain_text("KeyboardInterrupt")
    expect(widget).to_contain_text("interrupt long: done")

    # release asks for a second click, in the row, before it loses the session's state
    kernel("nap").get_by_role("button", name="Release").click()
    expect(widget).to_contain_text("every variable and import of the session is lost")
    kernel("nap").get_by_role("button", name="Confirm release").click()
    expect(kernel("nap")).to_have_count(0, timeout=KERNEL_GONE)  # the row goes once the kernel is gone
    expect(widget).to_contain_text("release nap: done")
    expect(kernel("long", "idle")).to_be_visible()
    assert console_errors == []

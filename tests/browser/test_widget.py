"""The pool widget in a real JupyterLab and Chromium: live through background cells, and its
interrupt button stops a running cell. Saves the screenshot used in the docs (docs/widget.png).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from .helpers import current_notebook, open_notebook, output, run_cell

pytestmark = pytest.mark.browser

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "widget.png"
TICKED = re.compile(r"^([2-9]|[1-9][0-9]+) s$")  # busy for at least 2 s: the figure ticked
CELLS = [
    "%load_ext jupyter_sessionpool",
    "%pool status",
    "%%pool session=nap --bg\nimport time\nprint('napping', flush=True)\ntime.sleep(4)\nprint('awake')",
    "%%pool session=long --bg\nimport time\nprint('long cell started', flush=True)\ntime.sleep(300)",
]


def test_widget_follows_background_cells_and_interrupts(
    page: Page, lab_url: str, lab_root: Path, console_errors: list[str]
) -> None:
    open_notebook(page, lab_url, lab_root, "widget.ipynb", CELLS)
    run_cell(page, 0)
    run_cell(page, 1)
    widget = output(page, 1).locator(".jsp-pool-widget")
    expect(widget).to_be_visible(timeout=30_000)
    expect(widget).to_contain_text("no kernels yet")

    def kernel(session: str, state: str):
        return widget.locator(f"tr[data-session='{session}'][data-state='{state}']")

    # a background cell: its session shows busy, with a busy time that ticks, then idle
    run_cell(page, 2)
    busy = kernel("nap", "busy")
    expect(busy).to_be_visible(timeout=60_000)
    expect(busy.locator(".jsp-busy-for")).to_have_text(TICKED, timeout=10_000)
    expect(kernel("nap", "idle")).to_be_visible(timeout=30_000)
    expect(output(page, 2)).to_contain_text("awake")
    expect(kernel("nap", "idle").locator("td").nth(4)).to_have_text("1")  # one execution

    # a long background cell, stopped by the widget's interrupt button
    run_cell(page, 3)
    expect(output(page, 3)).to_contain_text("long cell started", timeout=60_000)
    expect(kernel("long", "busy").locator(".jsp-busy-for")).to_have_text(TICKED, timeout=10_000)
    SCREENSHOT.parent.mkdir(exist_ok=True)
    current_notebook(page).screenshot(path=str(SCREENSHOT))
    widget.locator("button[title='interrupt session long']").click()
    expect(kernel("long", "idle")).to_be_visible(timeout=30_000)
    expect(output(page, 3)).to_contain_text("KeyboardInterrupt")
    expect(widget).to_contain_text("interrupt long: done")
    assert console_errors == []

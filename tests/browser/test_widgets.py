"""Widgets made on session kernels, live in a real JupyterLab and Notebook 7 with Chromium.

One notebook holds the scenarios, in the order a person would try them: a slider from a
``%%pool`` cell renders and works both ways, ``interact`` re-runs on the pooled kernel, an
``Output`` widget shows what it captured, ``tqdm.auto`` bars in ``--bg`` cells of two sessions
advance at once to 100%, and releasing a session replaces its widgets by a notice, leaving the
other sessions' and the notebook's own widgets live. No console errors throughout. Saves the
screenshot used in the README (docs/session-widgets.png, from JupyterLab).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect

from .conftest import JupyterServer
from .helpers import KERNEL_GONE, cell, open_notebook, run_cell

pytestmark = pytest.mark.browser

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "session-widgets.png"
POOL_START = 90_000  # ms: a pool kernel starting on a loaded 2-core machine
CELLS = [
    "%load_ext jupyter_sessionpool",
    # 1: a slider from a session, and the notebook's own slider beside it
    "%%pool session=a\nimport ipywidgets as w\ns = w.IntSlider(value=3, description='pooled')\ns",
    "%%pool session=a\nprint('pooled value', s.value)",
    "%%pool session=a\ns.value = 17",
    # 4: interact re-runs its function on the pooled kernel
    "%%pool session=a\nfrom ipywidgets import interact\ndef f(x):\n    print('f of', x, 'is', x * 2)\ninteract(f, x=4);",
    # 5: an Output widget of another session shows what it captured
    "%%pool session=b\nimport ipywidgets as w\nout = w.Output()\ndisplay(out)\nwith out:\n    print('captured on b')",
    # 6, 7: tqdm.auto bars in background cells of two sessions at once
    "%%pool session=c --bg\nfrom tqdm.auto import tqdm\nimport time\nfor i in tqdm(range(40), desc='bar c'):\n"
    "    time.sleep(0.1)",
    "%%pool session=d --bg\nfrom tqdm.auto import tqdm\nimport time\nfor i in tqdm(range(40), desc='bar d'):\n"
    "    time.sleep(0.1)",
    # 8: the notebook's own widget
    "import ipywidgets as w\nmine = w.IntSlider(value=5, description='local')\nmine",
    "%pool release a",
    "print('local value', mine.value)",
]


def output(page: Page, index: int) -> Locator:
    """Cell ``index``'s own output area (an Output widget has one inside it too)."""
    return cell(page, index).locator(".jp-Cell-outputArea")


def readout(area: Locator, description: str) -> Locator:
    """The editable number beside the slider labelled ``description``."""
    return area.locator(".widget-slider", has=area.page.get_by_text(description, exact=True)).locator(".widget-readout")


def set_slider(area: Locator, description: str, value: int) -> None:
    """Type ``value`` into the slider's readout and press Enter, as a person would."""
    box = readout(area, description)
    box.click()
    box.press("Control+a")
    box.type(str(value))
    box.press("Enter")
    expect(box).to_have_text(str(value))


def test_widgets_of_sessions_live_in_the_page(page: Page, server: JupyterServer, console_errors: list[str]) -> None:
    open_notebook(page, server, "widgets.ipynb", CELLS)
    run_cell(page, 0)

    # a slider from a %%pool cell renders; moved in the page, the pooled kernel has the value
    run_cell(page, 1)
    pooled = readout(output(page, 1), "pooled")
    expect(pooled).to_have_text("3", timeout=POOL_START)
    set_slider(output(page, 1), "pooled", 11)
    run_cell(page, 2)
    expect(output(page, 2)).to_contain_text("pooled value 11")

    # set on the kernel by a later %%pool cell, it moves in the page
    run_cell(page, 3)
    expect(pooled).to_have_text("17")

    # interact shows its output, and re-runs on the pooled kernel when its slider moves
    run_cell(page, 4)
    expect(output(page, 4)).to_contain_text("f of 4 is 8")
    set_slider(output(page, 4), "x", 6)
    expect(output(page, 4)).to_contain_text("f of 6 is 12")
    expect(output(page, 4)).not_to_contain_text("f of 4 is 8")

    # an Output widget shows what it captured
    run_cell(page, 5)
    expect(output(page, 5).locator(".widget-output")).to_contain_text("captured on b", timeout=POOL_START)

    # two --bg cells' tqdm bars advance at once, live, to 100%
    run_cell(page, 6)
    run_cell(page, 7)
    for index, name in ((6, "bar c"), (7, "bar d")):
        expect(output(page, index).locator(".widget-hprogress")).to_be_visible(timeout=POOL_START)
        bar = output(page, index).locator(".widget-hbox")  # tqdm pads with figure spaces (U+2007): \s
        expect(bar).to_contain_text(re.compile(name.replace(" ", r"\s") + r":\s+100%"), timeout=60_000)
        expect(bar).to_contain_text("40/40")

    # the notebook's own slider
    run_cell(page, 8)
    expect(readout(output(page, 8), "local")).to_have_text("5")
    if server.app == "lab":
        cell(page, 4).scroll_into_view_if_needed()
        page.locator(".jp-NotebookPanel:visible").screenshot(path=str(SCREENSHOT))

    # release: session a's widgets say so and are gone; b's and the notebook's own stay live
    run_cell(page, 9)
    for index in (1, 4):
        expect(output(page, index)).to_contain_text("the session was released; it is no longer live",
                                                    timeout=KERNEL_GONE)
        expect(output(page, index).locator(".widget-slider")).to_have_count(0)
    expect(output(page, 5).locator(".widget-output")).to_contain_text("captured on b")
    set_slider(output(page, 8), "local", 7)
    run_cell(page, 10)
    expect(output(page, 10)).to_contain_text("local value 7", timeout=KERNEL_GONE)  # after the release's cell
    assert console_errors == []

"""The corpus's widget notebooks in a real front end: through ``%%pool`` the page shows what it shows
for the same cells run directly (JupyterLab and Chromium; Notebook 7 renders with the same code).

The four notebooks the issue names (interact, the Output widget, beat frequencies, nbclient's
output widgets) run twice side by side, directly and as ``%%pool`` cells, each with "Run All";
then every cell's output area must read the same (after normalising what differs between two
runs, as tests/test_corpus.py does) and hold as many rendered widgets. The saved files are
compared for all 19 notebooks by test_corpus.py.
"""

from __future__ import annotations

import re
import shutil

import pytest
from playwright.sync_api import Page, expect
from test_corpus import CORPUS, code_cells

from .conftest import JupyterServer
from .helpers import cell, write_notebook

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not (CORPUS / "notebooks").is_dir(), reason="no corpus")]

NAMED = ["ipywidgets_using_interact", "ipywidgets_output_widget", "ipywidgets_beat_frequencies",
         "nbclient_output_widgets"]
RUN_ALL_TIMEOUT = 240_000  # ms: a notebook's cells on a loaded 2-core machine, a pool kernel's start included
_VOLATILE = [
    (re.compile(r"0x[0-9a-f]+"), "0x?"),
    (re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}|[0-9a-f]{32}"), "<uuid>"),
    (re.compile(r"\d+(\.\d+)?\s*(ns|µs|μs|us|ms|s|min)\b"), "<time>"),
    (re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"), "<logging time>"),
    (re.compile(r"ipykernel_\d+/\d+"), "ipykernel/N"),
]
_DONE = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    const kernel = panel?.sessionContext?.session?.kernel;
    const prompts = [...panel.node.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(p => p.textContent);
    return kernel?.status === 'idle' && prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p));
}"""


def readable(text: str) -> str:
    for pattern, replacement in _VOLATILE:
        text = pattern.sub(replacement, text)
    return " ".join(text.split())


def run_all(page: Page, server: JupyterServer, name: str) -> None:
    """Open ``name`` as a new tab and start "Run All" in it."""
    page.evaluate(
        "path => window.jupyterapp.commands.execute('docmanager:open', {path, factory: 'Notebook'}).then(() => null)",
        name,
    )
    expect(page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current")).to_contain_text(name.split("/")[-1])
    page.wait_for_function(
        "() => window.jupyterapp.shell.currentWidget?.sessionContext?.session?.kernel?.status === 'idle'",
        timeout=60_000,
    )
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells').then(() => null)")


def seen(page: Page, name: str, skip: int) -> list[tuple[str, int]]:
    """Once every cell of the notebook in tab ``name`` ran: each code cell's output, as read, and its widgets."""
    page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab", has_text=name.split("/")[-1]).click()
    page.wait_for_function(_DONE, timeout=RUN_ALL_TIMEOUT)
    expect(page.locator(".jp-NotebookPanel:visible")).not_to_contain_text("Loading widget", timeout=30_000)
    cells = page.locator(".jp-NotebookPanel:visible .jp-CodeCell")
    out = []
    for index in range(skip, cells.count()):
        area = cell(page, index).locator(".jp-Cell-outputArea")
        # the outputs without their prompts (counts differ by the %load_ext cell); textContent,
        # not innerText: cells out of view may not be laid out
        text = " ".join(area.locator(":scope > .jp-OutputArea-child > .jp-OutputArea-output").all_text_contents())
        assert "Loading widget" not in text and "Error displaying widget" not in text, (name, index, text)
        out.append((readable(text), area.locator(".jupyter-widgets").count()))
    return out


@pytest.mark.parametrize("server", ["lab"], indirect=True)
@pytest.mark.timeout(900)
def test_the_named_widget_notebooks_look_the_same_through_pool(
    page: Page, server: JupyterServer, console_errors: list[str]
) -> None:
    root = server.root / "corpus"
    shutil.copytree(CORPUS / "assets", root, dirs_exist_ok=True)
    (root / "work").mkdir(exist_ok=True)
    page.goto(f"{server.url}/lab?reset")
    page.wait_for_function("() => window.jupyterapp !== undefined")
    page.evaluate("() => window.jupyterapp.restored.then(() => null)")
    for stem in NAMED:
        sources = [s for s in code_cells(CORPUS / "notebooks" / f"{stem}.ipynb") if s.strip()]
        direct, pooled = f"corpus/work/{stem}-direct.ipynb", f"corpus/work/{stem}-pool.ipynb"
        write_notebook(server, direct, sources)
        write_notebook(server, pooled, ["%load_ext jupyter_sessionpool", *(f"%%pool session=w\n{s}" for s in sources)])
        run_all(page, server, direct)
        run_all(page, server, pooled)  # the two run at once, each on its kernel
        want, have = seen(page, direct, 0), seen(page, pooled, 1)
        assert len(want) == len(have) == len(sources)
        for index, (expected, got) in enumerate(zip(want, have)):
            assert got == expected, f"{stem} code cell {index}"
    assert console_errors == []

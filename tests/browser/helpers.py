"""Steps shared by the browser tests: open a notebook in JupyterLab, run a cell, find things."""

from __future__ import annotations

from pathlib import Path

import nbformat
from playwright.sync_api import Locator, Page, expect

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
KERNEL_READY_TIMEOUT = 60_000

_KERNEL_IDLE = """() => {
    const widget = window.jupyterapp.shell.currentWidget;
    const kernel = widget?.sessionContext?.session?.kernel;
    return kernel?.connectionStatus === 'connected' && kernel.status === 'idle';
}"""


def open_notebook(page: Page, lab_url: str, lab_root: Path, name: str, cells: list[str]) -> Locator:
    """Write ``name`` (code ``cells``, python3 kernelspec), open it, wait for its kernel's Idle.

    The first call on a page loads JupyterLab with a reset workspace; later calls open the
    notebook as another tab in the same app, so a test can switch between notebooks.
    Returns the notebook panel.
    """
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(source) for source in cells],
        metadata={"kernelspec": KERNELSPEC},
    )
    nbformat.write(notebook, lab_root / name)
    if not page.url.startswith(f"{lab_url}/lab"):
        page.goto(f"{lab_url}/lab?reset")
        page.wait_for_function("() => window.jupyterapp !== undefined")
        page.evaluate("() => window.jupyterapp.restored.then(() => null)")
    page.evaluate(
        "path => window.jupyterapp.commands.execute('docmanager:open', {path, factory: 'Notebook'}).then(() => null)",
        name,
    )
    expect(page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current")).to_contain_text(name)
    wait_kernel_idle(page)
    return current_notebook(page)


def wait_kernel_idle(page: Page) -> None:
    """Wait until the active notebook's kernel is connected and idle, and the status bar says so.

    The execution indicator alone says idle before the kernel connects; a Shift+Enter sent
    then is lost, hence both checks.
    """
    page.wait_for_function(_KERNEL_IDLE, timeout=KERNEL_READY_TIMEOUT)
    expect(page.locator("#jp-main-statusbar")).to_contain_text("| Idle", timeout=KERNEL_READY_TIMEOUT)


def current_notebook(page: Page) -> Locator:
    """The notebook panel in the active (visible) tab."""
    return page.locator(".jp-NotebookPanel:visible")


def cell(page: Page, index: int) -> Locator:
    """Cell ``index`` of the active notebook."""
    return current_notebook(page).locator(".jp-Cell").nth(index)


def output(page: Page, index: int) -> Locator:
    """The output area of cell ``index`` of the active notebook."""
    return cell(page, index).locator(".jp-OutputArea")


def run_cell(page: Page, index: int) -> None:
    """Click cell ``index``'s editor, press Shift+Enter, and wait until the kernel took it.

    "Took it" means the prompt changed (``[ ]:`` or an old count becomes ``[*]:`` or a new
    count); the cell may still be running when this returns.
    """
    target = cell(page, index)
    prompt = target.locator(".jp-InputArea-prompt")
    before = prompt.inner_text()
    target.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")
    expect(prompt).not_to_have_text(before)

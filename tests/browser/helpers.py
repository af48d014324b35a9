"""Steps shared by the browser tests, in JupyterLab and in Notebook 7: open a notebook, run a
cell, open the pool panel, find things."""

from __future__ import annotations

from typing import TYPE_CHECKING

import nbformat
from playwright.sync_api import Locator, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

if TYPE_CHECKING:
    from .conftest import JupyterServer

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
KERNEL_READY_TIMEOUT = 60_000
PALETTE_ENTRY = "Show Kernel Pool Panel"
PALETTE_COMMAND = "jupyter-sessionpool:open-panel"
# ms until a released kernel leaves the UI: its graceful stop may take shutdown_timeout (5 s), then a kill
KERNEL_GONE = 30_000

_KERNEL_IDLE = """() => {
    const widget = window.jupyterapp.shell.currentWidget;
    const kernel = widget?.sessionContext?.session?.kernel;
    return kernel?.connectionStatus === 'connected' && kernel.status === 'idle';
}"""


def write_notebook(server: JupyterServer, name: str, cells: list[str]) -> None:
    """Write ``name`` into the server's root: code ``cells``, python3 kernelspec."""
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(source) for source in cells],
        metadata={"kernelspec": KERNELSPEC},
    )
    nbformat.write(notebook, server.root / name)


def open_notebook(page: Page, server: JupyterServer, name: str, cells: list[str]) -> Locator:
    """Write ``name``, open it, wait for its kernel's Idle; return the notebook panel.

    JupyterLab: the first call on a page loads the app with a reset workspace; later calls
    open the notebook as another tab, so a test can switch between notebooks. Notebook 7:
    every notebook is a page of its own.
    """
    write_notebook(server, name, cells)
    if server.app == "notebook":
        page.goto(f"{server.url}/notebooks/{name}")
        wait_app(page)
    else:
        if not page.url.startswith(f"{server.url}/lab"):
            page.goto(f"{server.url}/lab?reset")
            wait_app(page)
        page.evaluate(
            "path => window.jupyterapp.commands.execute('docmanager:open', {path, factory: 'Notebook'})"
            ".then(() => null)",
            name,
        )
        expect(page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current")).to_contain_text(name)
    wait_kernel_idle(page, server)
    return current_notebook(page)


_WORKSPACE_CURRENT = """async name => {
    const config = JSON.parse(document.getElementById('jupyter-config-data').textContent);
    const reply = await fetch(`${config.baseUrl}lab/api/workspaces/${config.workspace}`);
    const layout = reply.ok ? (await reply.json()).data['layout-restorer:data'] : undefined;
    return layout?.main?.current === `notebook:${name}`;
}"""


def wait_workspace_saved(page: Page, current: str) -> None:
    """Wait until JupyterLab's saved workspace has notebook ``current`` as the current tab.

    A reload restores the layout from the saved workspace, not from the URL's tree path, and
    JupyterLab saves it a while after a change (debounced, then a PUT): reloaded before that,
    the page came back on the previous tab. The saved workspace is on the server, which sends
    no event, so this asks it again every 250 ms.
    """
    page.wait_for_function(_WORKSPACE_CURRENT, arg=current, polling=250, timeout=30_000)


def wait_app(page: Page) -> None:
    """Wait until the app exists and has restored its layout (every plugin has activated)."""
    page.wait_for_function("() => window.jupyterapp !== undefined")
    page.evaluate("() => window.jupyterapp.restored.then(() => null)")


def wait_kernel_idle(page: Page, server: JupyterServer) -> None:
    """Wait until the active notebook's kernel is connected and idle (and, in JupyterLab,
    the status bar says so).

    The execution indicator alone says idle before the kernel connects; a Shift+Enter sent
    then is lost, hence the check on the kernel connection itself.
    """
    page.wait_for_function(_KERNEL_IDLE, timeout=KERNEL_READY_TIMEOUT)
    if server.app == "lab":
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


def open_panel_from_palette(page: Page) -> Locator:
    """Open the command palette (Ctrl+Shift+C, as a user would), pick our entry; the panel.

    As a user would, this tries again (3 times) when an attempt visibly did not take. Under
    load each step has been seen to miss: the shortcut dropped; the palette, a modal that
    closes when it loses focus, closed as the notebook took focus once its kernel connected;
    an entry detached mid-click by the palette redrawing its list on a command change
    (hence Enter on the highlighted entry instead of a click).
    """
    search = page.locator(".lm-CommandPalette-input:visible")
    active = page.locator(".lm-CommandPalette-item.lm-mod-active:visible")
    panel = page.locator("#jupyter-sessionpool-panel")

    def attempt() -> Locator:
        if not search.is_visible():
            page.keyboard.press("Escape")  # leave the cell editor: command mode
            page.keyboard.press("Control+Shift+C")
        expect(search).to_be_focused(timeout=5000)
        search.fill("kernel pool", timeout=5000)
        expect(active).to_have_attribute("data-command", PALETTE_COMMAND, timeout=5000)
        expect(active).to_contain_text(PALETTE_ENTRY, timeout=5000)
        search.press("Enter", timeout=5000)
        expect(panel).to_be_visible(timeout=5000)
        return panel

    for _ in range(2):
        try:
            return attempt()
        except (AssertionError, PlaywrightTimeoutError):
            pass
    return attempt()

"""Output fidelity on real notebooks written by others (../shared/corpus beside the repository, see its SOURCES.md).

Each notebook runs three ways, all at once: directly with nbclient (the reference), through
``%%pool session=<stem>`` cells in a notebook run by nbclient, and through a session's lease
with display updates applied the way ``results.py`` documents. After normalising what
legitimately differs (counts, addresses, ids, timings, paths, image bytes, how a stream was
split into messages) every cell's outputs must be the same, errors included: same name and
message, one error per failing cell; and so must the saved widgets (``metadata.widgets``: the
same models by type and state, an Output widget's captured outputs included). Through
``%%pool`` nbclient is the front end of the notebook's kernel, which relays the session's
widgets to it; through the API the widget state is ``Lease.widget_state()``, and the test
does for Output widgets what a front end does (``batch.OutputWidgets``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from widgetkit import volatile, widget_models

from jupyter_sessionpool import AsyncKernelPool
from jupyter_sessionpool.batch import OutputWidgets, set_widgets_metadata

# the project's shared/ folder sits beside the repository (also in CI); JSP_CORPUS points elsewhere
CORPUS = Path(os.environ.get("JSP_CORPUS", Path(__file__).resolve().parents[2] / "shared" / "corpus"))
NOTEBOOKS = sorted((CORPUS / "notebooks").glob("*.ipynb"))
AT_ONCE = 4  # notebooks in flight per way of running them

pytestmark = pytest.mark.skipif(not NOTEBOOKS, reason=f"no corpus at {CORPUS}")


def code_cells(path: Path) -> list[str]:
    """The notebook's code, as stored (read as JSON: some upstream files repeat cell ids)."""
    cells = json.loads(path.read_text())["cells"]
    return ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]


def workdir(run: Path, mode: str) -> Path:
    """``<run>/<mode>/work``, with the corpus assets beside it (the notebooks read ``../images``)."""
    root = run / mode
    shutil.copytree(CORPUS / "assets", root, dirs_exist_ok=True)
    (root / "work").mkdir()
    return root / "work"


Run = tuple[list[list[dict[str, Any]]], dict[str, Any]]  # each cell's outputs; the notebook's metadata


async def run_notebook(sources: list[str], cwd: Path) -> Run:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    client = NotebookClient(
        nb, timeout=120, kernel_name="python3", allow_errors=True, resources={"metadata": {"path": str(cwd)}}
    )
    await client.async_execute()
    return [cell.outputs for cell in nb.cells], nb.metadata


async def direct(path: Path, cwd: Path) -> Run:
    return await run_notebook(code_cells(path), cwd)


async def through_magics(path: Path, cwd: Path) -> Run:
    prefix = f"%%pool session={path.stem}\n"
    setup = "%load_ext jupyter_sessionpool\n%config KernelPool.max_kernels = 1"
    # an empty cell stays empty: IPython runs nothing for it, and %%pool with no body is a usage error
    outputs, metadata = await run_notebook([setup, *(prefix + s if s.strip() else s for s in code_cells(path))], cwd)
    assert outputs[0] == []
    return outputs[1:], metadata


async def through_api(pool: AsyncKernelPool, path: Path) -> Run:
    results = []
    widgets = OutputWidgets()
    try:
        async with pool.checkout(path.stem) as lease:
            for source in code_cells(path):
                result = await lease.execute(source, timeout=120, on_comm=widgets.on_comm)
                await widgets.sync(lease)
                for display_id, shown in result.displays.items():  # the rule results.py documents
                    for earlier in results:
                        for i in earlier.displays.get(display_id, {}).get("outputs", []):
                            earlier.outputs[i].update(data=shown["data"], metadata=shown["metadata"])
                results.append(result)
            saved = nbformat.v4.new_notebook()
            set_widgets_metadata(saved, lease.widget_state())  # what a batch run saves
    finally:
        await pool.release(path.stem)
    return [r.outputs for r in results], saved.metadata


# ---- normalising what legitimately differs ---------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_VOLATILE = [
    (re.compile(r"0x[0-9a-fA-F]+"), "0x?"),  # addresses in reprs
    (re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}"), "<uuid>"),
    (re.compile(r"[0-9a-f]{32}"), "<uuid>"),
    (re.compile(r"\d+(\.\d+)?\s*(ns|µs|μs|us|ms|s|min)\b"), "<time>"),  # %%time, %timeit (IPython writes μ, U+03BC)
]
_IMAGES = ("image/png", "image/jpeg", "image/svg+xml", "audio/wav", "video/mp4")


def _text(value: Any, paths: list[str]) -> Any:
    if isinstance(value, list):
        value = "".join(value)
    if not isinstance(value, str):
        return value
    for path in paths:
        value = value.replace(path, "<work>")
    for pattern, replacement in _VOLATILE:
        value = pattern.sub(replacement, value)
    return value


def normalise(outputs: list[dict[str, Any]], paths: list[str]) -> list[Any]:
    """What a reader sees of one cell, without what may differ between two runs of it."""
    seen: list[Any] = []
    for out in outputs:
        kind = out["output_type"]
        if kind == "stream":
            text = _text(out["text"], paths)
            if seen and seen[-1][0] == "stream" and seen[-1][1] == out["name"]:
                seen[-1] = ("stream", out["name"], seen[-1][2] + text)  # split into messages differently
            else:
                seen.append(("stream", out["name"], text))
        elif kind == "error":
            seen.append(("error", out["ename"], _text(_ANSI.sub("", out["evalue"]), paths)))
        else:
            data = {}
            for mime, value in out["data"].items():
                if mime in _IMAGES:
                    data[mime] = "<bytes>"
                elif mime == "application/vnd.jupyter.widget-view+json":
                    data[mime] = {k: v for k, v in value.items() if k != "model_id"}
                else:
                    data[mime] = _text(value, paths)
            seen.append((kind, data))
    return seen


@pytest.mark.timeout(900)
def test_corpus_outputs_match_a_direct_run(tmp_path):
    async def main():
        dirs = {mode: workdir(tmp_path, mode) for mode in ("direct", "magics", "api")}
        paths = sorted((str(p) for d in dirs.values() for p in (d, d.parent)), key=len, reverse=True)
        limits = {mode: asyncio.Semaphore(AT_ONCE) for mode in dirs}

        async def limited(mode, coro):
            async with limits[mode]:
                return await coro

        async with AsyncKernelPool(max_kernels=AT_ONCE, cwd=str(dirs["api"]), checkout_timeout=600) as pool:
            runs = {
                (path.stem, mode): limited(mode, coro)
                for path in NOTEBOOKS
                for mode, coro in (
                    ("direct", direct(path, dirs["direct"])),
                    ("magics", through_magics(path, dirs["magics"])),
                    ("api", through_api(pool, path)),
                )
            }
            done = await asyncio.gather(*runs.values())
        return dict(zip(runs, done)), paths

    runs, paths = asyncio.run(main())
    differences = []
    for path in NOTEBOOKS:
        outputs, metadata = runs[path.stem, "direct"]
        expected = [normalise(cell, paths) for cell in outputs]
        errors = [sum(o[0] == "error" for o in cell) for cell in expected]
        assert all(n <= 1 for n in errors), (path.stem, errors)  # one error per failing cell, directly too
        widgets = widget_models(metadata, lambda text: volatile(_text(text, paths)))
        for mode in ("magics", "api"):
            outputs, metadata = runs[path.stem, mode]
            got = [normalise(cell, paths) for cell in outputs]
            for index, (want, have) in enumerate(zip(expected, got, strict=True)):
                if want != have:
                    differences.append(f"{path.stem} [{mode}] code cell {index}:\n  direct: {want}\n  {mode}: {have}")
            saved = widget_models(metadata, lambda text: volatile(_text(text, paths)))
            if saved != widgets:
                missing, extra = sorted(set(widgets) - set(saved)), sorted(set(saved) - set(widgets))
                differences.append(f"{path.stem} [{mode}] metadata.widgets:\n  only direct: {missing}\n  only {mode}: {extra}")
    assert not differences, "\n".join(differences)

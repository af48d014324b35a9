"""Shared fixtures: isolated Jupyter paths, pools that always shut down, and an orphan check.

Every process this test run starts inherits ``JSP_TEST_RUN=<id>``; when the session ends,
any process still carrying it (a kernel, a lab server, a helper script) is reported as an
orphan, killed, and fails the run.

``JSP_TEST_START_METHOD=spawn`` (or ``fork``) runs every pool of this process with that
``start_method`` (default: the pools' own default, ``auto``, which forks ipykernels on
Linux); ``make test`` runs the kernel-touching files under both. Under ``fork``, a
``make_pool`` pool of a kernelspec no template can serve (the purpose-built test kernels,
another provisioner) gets ``auto``, which spawns it: ``fork`` refuses those by design.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import slicedpoll
from jupyter_client.kernelspec import KernelSpecManager

from jupyter_sessionpool import AsyncKernelPool
from jupyter_sessionpool.config import PoolSettings
from jupyter_sessionpool.forking import Unservable, stop_templates
from jupyter_sessionpool.forking.engine import plan

RUN_ID = uuid.uuid4().hex
_SCRATCH = Path(tempfile.mkdtemp(prefix="jsp-test-"))
os.environ["JSP_TEST_RUN"] = RUN_ID
os.environ["JUPYTER_RUNTIME_DIR"] = str(_SCRATCH / "runtime")
os.environ["IPYTHONDIR"] = str(_SCRATCH / "ipython")
os.environ["JUPYTER_PLATFORM_DIRS"] = "1"
os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")

slicedpoll.install()  # nbclient and papermill in this process wait in slices (tests/slicedpoll.py says why)

START_METHOD = os.environ.get("JSP_TEST_START_METHOD")
if START_METHOD:  # every pool made in this process, not only make_pool's
    PoolSettings.class_traits()["start_method"].default_value = START_METHOD

TEST_KERNELS = Path(__file__).parent / "kernels"
pytest_plugins = ["commkit", "gatewaykit"]  # ``frontend`` for comm tests; ``kg``/``eg`` gateways for remote tests


def processes_of_this_run() -> list[tuple[int, str]]:
    """(pid, command line) of every live process started by this test run, except pytest."""
    marker = f"JSP_TEST_RUN={RUN_ID}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{entry}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue  # a zombie is already dead; its parent reaps it
        except OSError:
            continue
        found.append((int(entry), cmd))
    return found


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the browser tests last: Playwright's sync API keeps an event loop running on the
    main thread while its session fixture lives, which asyncio tests after it cannot share."""
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)


@pytest.fixture(scope="session", autouse=True)
def no_orphans():
    """Fail the run if any process it started outlives it."""
    yield
    stop_templates()  # the provisioner's templates live as long as their process: this one ends here
    left = [(pid, cmd) for pid, cmd in processes_of_this_run() if "chromium" not in cmd and "chrome" not in cmd]
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if left:
        listing = "\n".join(f"  {pid}: {cmd[:200]}" for pid, cmd in left)
        pytest.fail(f"{len(left)} process(es) outlived the test run:\n{listing}", pytrace=False)


def forkable(kernel_name: str) -> bool:
    """Whether a fork template can serve the kernelspec: an ipykernel's argv, launched by no other provisioner."""
    try:
        spec = KernelSpecManager().get_kernel_spec(kernel_name)
    except Exception:  # missing or unreadable: the pool itself reports it
        return True
    provisioner = (spec.metadata.get("kernel_provisioner") or {}).get("provisioner_name")
    if provisioner not in (None, "local-provisioner", "sessionpool-fork"):
        return False
    try:
        plan(spec.argv, "{connection_file}", {})
    except Unservable:
        return False
    return True


@pytest.fixture
async def make_pool():
    """Build pools that are always shut down, even when the test fails."""
    pools: list[AsyncKernelPool] = []

    async def make(**kwargs) -> AsyncKernelPool:
        if START_METHOD == "fork" and not forkable(kwargs.get("kernel_name", "python3")):
            kwargs.setdefault("start_method", "auto")
        pool = AsyncKernelPool(**kwargs)
        pools.append(pool)
        return await pool.start()

    yield make
    for pool in pools:
        await pool.shutdown()


@pytest.fixture
def kernel_dir(tmp_path, monkeypatch):
    """A JUPYTER_PATH with our purpose-built test kernelspecs (crashing, hanging, ...)."""
    kernels = tmp_path / "share" / "kernels"
    kernels.mkdir(parents=True)
    for spec in TEST_KERNELS.glob("*.json"):
        name = spec.stem
        (kernels / name).mkdir()
        text = spec.read_text().replace("{python}", sys.executable).replace("{here}", str(TEST_KERNELS))
        (kernels / name / "kernel.json").write_text(text)
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share"))
    return kernels

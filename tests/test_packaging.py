"""The package as a user gets it: the README's install block run as written, and the sdist.

The README's Install block runs line by line, as written, in a fresh venv (with pip, and
nothing else) on a clean copy of the checkout (tracked and new files only, so the
JupyterLab extension is built from source, exactly once): ``pip install build``, ``python
-m build``, ``pip install`` of the wheel with its own dependencies, and the checks it shows
— which must work with what the wheel brings (JupyterLab is not among it). So the block
cannot rot. That venv is then checked for what a user relies on: the prebuilt extension
enabled, ``%load_ext jupyter_sessionpool``, ``py.typed``, the license and the
``jupyter-sessionpool`` script. The sdist goes, with Node hidden from PATH, into another
fresh venv and is checked the same way.

For the checks that need JupyterLab (``jupyter labextension list``), and to keep the sdist's
venv fast (no pip of its own: this venv's pip installs into it with ``--python``, and the
package goes in with ``--no-deps``), a ``.pth`` file afterwards lets each venv import what
it lacks from the venv running this test. A plain path in a ``.pth`` file is not a site
directory, so that venv's own editable install of jupyter_sessionpool is not picked up;
each check also asserts that what it found lives inside the fresh venv. The builds are a
user's, build isolation and all: they need PyPI (the build environments) and the npm
registry (``jlpm install``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VERSION = re.search(r'__version__ = "(.+)"', (ROOT / "jupyter_sessionpool" / "_version.py").read_text())[1]
NODE_TOOLS = ("node", "nodejs", "npm", "npx", "corepack", "yarn", "jlpm")
LICENSE_LINE = "Copyright (c) 2026, jupyter_sessionpool contributors"

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(900)]


def clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment without what points Python at the checkout or its venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_NO_COMPILE"] = "1"  # the build environments are thrown away: no .pyc for them
    env.update(overrides)
    return env


def run(cmd: list[str | Path], cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a command to completion in ``cwd`` (never the checkout: ``python -c`` would import
    the package from there); its stdout and stderr, or a failure showing their tails."""
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env or clean_env(), capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    if proc.returncode:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{out[-6000:]}", pytrace=False)
    return out


@dataclass
class Dists:
    sdist: Path
    wheel: Path
    log: str  # everything `python -m build` printed


@dataclass
class Venv:
    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def site_packages(self) -> Path:
        (found,) = self.root.glob("lib/python*/site-packages")
        return found


def readme_install_block() -> list[str]:
    """The command lines of README.md's Install block, as written."""
    section = (ROOT / "README.md").read_text().split("\n## Install\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)[1]
    return [line for line in block.splitlines() if line.strip()]


@dataclass
class ReadmeRun:
    base: Path
    venv: Venv
    printed: dict[str, str]  # command line -> what it printed
    lacked: dict[str, bool]  # module -> whether the venv could not import it before the block ran (build) or after it (jupyterlab)

    def output_of(self, start: str) -> str:
        (found,) = [out for line, out in self.printed.items() if line.startswith(start)]
        return found


@pytest.fixture(scope="module")
def readme(tmp_path_factory: pytest.TempPathFactory) -> ReadmeRun:
    """README's Install block, line by line as written, in a fresh venv on a clean copy of this checkout."""
    base = tmp_path_factory.mktemp("packaging")
    src = base / "src"
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():  # a tracked file deleted in the work tree is skipped
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    assert not (src / "jupyter_sessionpool" / "labextension").exists(), "the copy must lack the built extension"

    venv = Venv(base / "venv")
    run([sys.executable, "-m", "venv", venv.root], cwd=base)
    # as `source venv/bin/activate` leaves it; the npm packages kept for the next run, not in the copy
    env = clean_env(PATH=f"{venv.root / 'bin'}{os.pathsep}{os.environ['PATH']}", VIRTUAL_ENV=str(venv.root),
                    YARN_ENABLE_GLOBAL_CACHE="1")

    def lacks(module: str) -> bool:
        return subprocess.run([venv.python, "-c", f"import {module}"], cwd=base, env=env, capture_output=True).returncode != 0

    lacked = {"build": lacks("build")}
    printed = {}
    for line in readme_install_block():
        start = time.monotonic()
        printed[line] = run(["bash", "-c", line.replace("/tmp/dist", str(base / "dist"))], cwd=src, env=env)
        print(f"{line[:60]}: {time.monotonic() - start:.0f} s")
    lacked["jupyterlab"] = lacks("jupyterlab")
    return ReadmeRun(base, venv, printed, lacked)


@pytest.fixture(scope="module")
def dists(readme: ReadmeRun) -> Dists:
    """The sdist and the wheel that the README's `python -m build` made."""
    (sdist,) = (readme.base / "dist").glob("*.tar.gz")
    (wheel,) = (readme.base / "dist").glob("*.whl")
    return Dists(sdist, wheel, readme.output_of("python -m build"))


def fresh_venv(root: Path, install: Path, path: str) -> Venv:
    """A new venv with ``install`` (a wheel or an sdist) pip-installed alone, with ``path``
    as PATH, then given the test venv's site-packages as a plain path for the dependencies."""
    venv = Venv(root)
    run([sys.executable, "-m", "venv", "--without-pip", root], cwd=root.parent)
    env = clean_env(PATH=f"{root / 'bin'}{os.pathsep}{path}")
    start = time.monotonic()
    run([sys.executable, "-m", "pip", "--python", venv.python, "install", "--no-deps", install], cwd=root.parent, env=env)
    print(f"pip install {install.name}: {time.monotonic() - start:.0f} s")
    (venv.site_packages() / "_test_venv_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return venv


def path_without_node(shim: Path) -> str:
    """A PATH with every command of this one except Node's (symlinks in ``shim``)."""
    shim.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            link = shim / entry.name
            if entry.name in NODE_TOOLS or link.exists() or link.is_symlink():
                continue
            link.symlink_to(entry.path)
    return str(shim)


@pytest.fixture(scope="module")
def wheel_venv(readme: ReadmeRun) -> Venv:
    """The README's venv (the wheel and its dependencies), given the test venv's site-packages for JupyterLab."""
    (readme.venv.site_packages() / "_test_venv_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return readme.venv


@pytest.fixture(scope="module")
def sdist_venv(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    base = tmp_path_factory.mktemp("sdist")
    path = path_without_node(base / "bin-without-node")
    for tool in NODE_TOOLS:
        assert shutil.which(tool, path=path) is None, f"{tool} is still on the PATH meant to hide Node"
    return fresh_venv(base / "venv", dists.sdist, path)


def check_installed(venv: Venv) -> None:
    """What a user of the installed package relies on, found inside ``venv`` itself."""
    site = venv.site_packages()
    probe = run([venv.python, "-c", (
        "import jupyter_sessionpool\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "ip = InteractiveShell.instance()\n"
        "ip.run_line_magic('load_ext', 'jupyter_sessionpool')\n"
        "magics = ip.magics_manager.magics\n"
        "print('package:', jupyter_sessionpool.__file__)\n"
        "print('magics:', 'pool' in magics['line'], 'pool' in magics['cell'])\n"
    )], cwd=venv.root)
    assert "magics: True True" in probe, f"%load_ext jupyter_sessionpool did not add %pool and %%pool:\n{probe}"
    package = Path(re.search(r"^package: (.+)$", probe, re.M)[1])
    assert package == site / "jupyter_sessionpool" / "__init__.py", f"imported from {package}, not the fresh venv"
    assert (package.parent / "py.typed").is_file()

    (dist_info,) = site.glob("jupyter_sessionpool-*.dist-info")
    assert LICENSE_LINE in (dist_info / "licenses" / "LICENSE").read_text()
    metadata = (dist_info / "METADATA").read_text()
    assert "License-Expression: BSD-3-Clause" in metadata
    assert "Classifier: Framework :: Jupyter :: JupyterLab :: Extensions :: Prebuilt" in metadata
    assert "jupyter-sessionpool = jupyter_sessionpool.cli:main" in (dist_info / "entry_points.txt").read_text()
    script = venv.root / "bin" / "jupyter-sessionpool"
    assert os.access(script, os.X_OK)
    shebang = script.read_text().splitlines()[0]
    assert shebang.startswith("#!") and Path(shebang[2:]).parent == venv.root / "bin", shebang

    # `jupyter labextension list` names each data directory, then the extensions found in it.
    listing = re.sub(r"\x1b\[[0-9;]*m", "", run([venv.python, "-m", "jupyterlab.labextensions", "list"], cwd=venv.root))
    ours = str(venv.root / "share" / "jupyter" / "labextensions")
    found_in, directory = [], None
    for line in listing.splitlines():
        if line.startswith("/"):
            directory = line.strip()
        elif re.fullmatch(rf"\s+jupyter-sessionpool v{re.escape(VERSION)} enabled OK \(python, jupyter_sessionpool\)", line):
            found_in.append(directory)
    assert found_in == [ours], f"the extension should be enabled and OK under {ours} alone:\n{listing}"


def test_readme_install_block_runs_as_written(readme: ReadmeRun) -> None:
    """Each line of the block ran (the fixture fails on the first that does not), in a venv
    that needed its first line (no `build` before it) and holds only what the wheel brings."""
    assert readme.lacked == {"build": True, "jupyterlab": True}
    assert readme.output_of("jupyter-sessionpool --version").strip() == f"jupyter-sessionpool {VERSION}"
    where = readme.venv.root / "share" / "jupyter" / "labextensions" / "jupyter-sessionpool"
    assert readme.output_of("python -c").strip() == str(where)
    assert (where / "package.json").is_file()


def test_build_runs_the_js_build_once(dists: Dists) -> None:
    """The sdist step builds the extension from source; the wheel built from that sdist
    reuses the shipped build instead of running `jlpm install` a second time."""
    installs = re.findall(r"^INFO:hatch_jupyter_builder\.utils:> \S*jlpm install$", dists.log, re.M)
    assert len(installs) == 1, f"`jlpm install` ran {len(installs)} times:\n{dists.log[-3000:]}"
    assert "Skip-if-exists file(s) found" in dists.log

    with tarfile.open(dists.sdist) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {"LICENSE", "jupyter_sessionpool/py.typed", "jupyter_sessionpool/labextension/static/style.js",
            "jupyter_sessionpool/labextension/package.json"} <= names
    assert not any(n.startswith(("labextension/node_modules/", "labextension/lib/")) for n in names)

    with zipfile.ZipFile(dists.wheel) as wheel:
        names = set(wheel.namelist())
    data = f"jupyter_sessionpool-{VERSION}.data/data/share/jupyter/labextensions/jupyter-sessionpool/"
    assert {"jupyter_sessionpool/py.typed", f"jupyter_sessionpool-{VERSION}.dist-info/licenses/LICENSE",
            data + "package.json", data + "install.json", data + "static/style.js"} <= names
    # the server extension ships disabled: installing the package adds no API to anyone's server
    assert f"jupyter_sessionpool-{VERSION}.data/data/etc/jupyter/jupyter_server_config.d/jupyter_sessionpool.json" in names


def test_wheel_installs_complete(wheel_venv: Venv) -> None:
    check_installed(wheel_venv)


def test_sdist_installs_without_node(sdist_venv: Venv) -> None:
    """pip builds the sdist's wheel with no Node on PATH: the shipped extension is used."""
    check_installed(sdist_venv)


def test_console_script_prints_version(wheel_venv: Venv) -> None:
    env = clean_env(PATH=f"{wheel_venv.root / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert VERSION in run([wheel_venv.root / "bin" / "jupyter-sessionpool", "--version"], cwd=wheel_venv.root, env=env)
    assert VERSION in run([wheel_venv.python, "-m", "jupyter", "sessionpool", "--version"], cwd=wheel_venv.root, env=env)

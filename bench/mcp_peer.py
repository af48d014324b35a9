"""Item 12: the MCP `execute_code` sequence an agent runs, against jupyter-mcp-server 2.x on a Jupyter Server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from _common import Section, Stats, free_port, ms
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from service import serve

PEER_VENV = Path(__file__).resolve().parent.parent / ".venv-mcp-peer"

METHOD = """\
One agent's sequence of MCP `execute_code` calls, with the `mcp` SDK's own client, against three
servers on this machine: ours over streamable HTTP (`/sessionpool/mcp` of `jupyter-sessionpool
serve --min-idle 1`), ours over stdio (`jupyter-sessionpool mcp --min-idle 1`), and the peer
an agent would pick, jupyter-mcp-server {peer_version} (its own venv, `.venv-mcp-peer`) over
stdio as its README sets it up, with `JUPYTER_URL`/`JUPYTER_TOKEN` pointing at a `jupyter lab`
({lab_version}, with jupyter-collaboration) from the same venv. The sequence: a first call
`x = 41` on a fresh server; {warm} warm calls `x + 1` (each must answer 42: state across calls);
the kernel's process is killed with SIGKILL, then `x` is asked twice; then a cell that sleeps
30 s with `timeout` 2, then `x = 1; x` to see that the kernel still serves. Times are each
call's wall time as the client sees it."""


def text(result: Any) -> str:
    return "\n".join(getattr(block, "text", f"[{block.type}]") for block in result.content)


def shown(result: Any, elapsed: float) -> str:
    """A table cell: what came back, shortened, and how long it took."""
    body = re.sub(r"\x1b\[[0-9;]*m", "", text(result)).replace("\n", " ").replace("|", "\\|").strip()
    body = body if len(body) <= 90 else body[:87] + "..."
    return f"{'**tool error** ' if result.is_error else ''}`{body}` ({ms(elapsed)} ms)"


async def timed(client: ClientSession, code: str, **args: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    result = await client.call_tool("execute_code", {"code": code, **args})
    return result, time.perf_counter() - t0


async def sequence(client: ClientSession, warm: int, kill: Any, **where: Any) -> dict[str, Any]:
    """The agent's calls; ``kill()`` SIGKILLs the kernel that ran them."""
    first, first_s = await timed(client, "x = 41", **where)
    warms = []
    for _ in range(warm):
        result, seconds = await timed(client, "x + 1", **where)
        assert "42" in text(result), text(result)
        warms.append(seconds)
    await kill()
    after_kill, after_kill_s = await timed(client, "x", **where)
    again, again_s = await timed(client, "x", **where)
    slow, slow_s = await timed(client, "import time; time.sleep(30)", timeout=2, **where)
    recovered, recovered_s = await timed(client, "x = 1; x", **where)
    return {
        "first call `x = 41`": f"{ms(first_s)} ms" + (" (tool error)" if first.is_error else ""),
        "warm `x + 1`, p50 / p99": f"{ms(Stats.of(warms).p50)} / {ms(Stats.of(warms).p99)} ms (n={len(warms)}, all 42)",
        "`x` after the kernel was killed": shown(after_kill, after_kill_s),
        "`x` again": shown(again, again_s),
        "`sleep(30)` with timeout 2": shown(slow, slow_s),
        "`x = 1; x` after the timeout": shown(recovered, recovered_s),
        "warm_samples": warms,
    }


def kill_pid(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


async def ours_http(warm: int) -> dict[str, Any]:
    with serve("--max-kernels", "4", "--min-idle", "1") as (port, token):
        http = create_mcp_http_client(headers={"Authorization": f"token {token}"})
        url = f"http://127.0.0.1:{port}/sessionpool/mcp"
        async with http, streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await sequence(session, warm, lambda: _kill_session(session, "agent"), session="agent")


async def _kill_session(session: ClientSession, name: str) -> None:
    listed = json.loads(text(await session.call_tool("list_sessions", {})))
    kill_pid(next(s["pid"] for s in listed if s["id"] == name))


async def ours_stdio(warm: int) -> dict[str, Any]:
    root = tempfile.mkdtemp(prefix="jsp-bench-mcp-")
    params = StdioServerParameters(command=sys.executable, args=["-m", "jupyter_sessionpool", "mcp", "--min-idle", "1",
                                                                 "--root-dir", root], env=dict(os.environ))  # fmt: skip
    with open(Path(root) / "stderr.log", "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            return await sequence(session, warm, lambda: _kill_session(session, "agent"), session="agent")


@asynccontextmanager
async def peer_lab() -> AsyncIterator[tuple[str, str, subprocess.Popen]]:
    """`jupyter lab` from the peer's venv, with private Jupyter paths; yields (url, token, process)."""
    port, token = free_port(), uuid.uuid4().hex
    home = Path(tempfile.mkdtemp(prefix="jsp-bench-peer-"))
    env = {**os.environ, "HOME": str(home), "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTER_DATA_DIR": str(home / "data"), "JUPYTER_RUNTIME_DIR": str(home / "runtime")}  # fmt: skip
    env.pop("JUPYTER_PATH", None)
    log = open(home / "lab.log", "wb")
    proc = subprocess.Popen(
        [str(PEER_VENV / "bin" / "jupyter"), "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={home}"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=home,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:  # another program's server: poll its API until it answers
            if proc.poll() is not None:
                raise RuntimeError(f"the peer's jupyter lab exited with {proc.returncode}; see {log.name}")
            try:
                request = urllib.request.Request(f"{url}/api/status", headers={"Authorization": f"token {token}"})
                with urllib.request.urlopen(request, timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the peer's jupyter lab did not answer; see {log.name}")
            await asyncio.sleep(0.1)
        yield url, token, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def kernels_of(pid: int) -> list[int]:
    """Kernel processes started by the process ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if ppid == pid and b"ipykernel" in f.read():
                        found.append(int(entry))
            except (OSError, ValueError):
                continue
    return found


async def peer(warm: int) -> dict[str, Any]:
    async with peer_lab() as (url, token, lab):
        env = {**os.environ, "JUPYTER_URL": url, "JUPYTER_TOKEN": token, "ALLOW_IMG_OUTPUT": "true"}
        params = StdioServerParameters(command=str(PEER_VENV / "bin" / "jupyter-mcp-server"), args=[], env=env)
        with open(Path(tempfile.mkdtemp(prefix="jsp-bench-peer-mcp-")) / "stderr.log", "w") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
                await session.initialize()

                async def kill() -> None:
                    for pid in kernels_of(lab.pid):
                        kill_pid(pid)

                return await sequence(session, warm, kill)


def _version(binary: Path, package: str) -> str:
    out = subprocess.run([str(binary), "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
                         capture_output=True, text=True)  # fmt: skip
    return out.stdout.strip() or "?"


async def measure(quick: bool) -> Section:
    warm = 5 if quick else 30
    python = PEER_VENV / "bin" / "python"
    section = Section(
        "mcp_peer",
        "12. MCP `execute_code` as an agent runs it: ours vs jupyter-mcp-server",
        METHOD.format(peer_version=_version(python, "jupyter-mcp-server"), lab_version=_version(python, "jupyterlab"),
                      warm=warm),
    )  # fmt: skip
    if not python.exists():
        section.notes.append(f"not measured: the peer's venv {PEER_VENV} is missing (`make .venv-mcp-peer/.installed`)")
        return section
    columns = {
        "jupyter_sessionpool, streamable HTTP": await ours_http(warm),
        "jupyter_sessionpool, stdio": await ours_stdio(warm),
        "jupyter-mcp-server, stdio": await peer(warm),
    }
    steps = [k for k in next(iter(columns.values())) if k != "warm_samples"]
    section.table(["step", *columns], [[step, *(c[step] for c in columns.values())] for step in steps])
    section.raw = {name: c["warm_samples"] for name, c in columns.items()}
    section.notes.append(
        "The peer's warm call takes a second because its client polls the kernel once a second; after its kernel "
        "was killed it waited out its own 30 s default timeout, and then answered `x` with a `NameError` as normal "
        "output: a fresh kernel posing as the old one. Ours answered the loss as a tool error naming it "
        "(`SessionLost`, or `KernelDied` where the call reached the kernel before its death was noticed, then "
        "`SessionLost` once), and the next call ran on a fresh kernel."
    )
    section.notes.append(
        "Ours over streamable HTTP pays the SDK's stateless transport per request (a transport set up and torn "
        "down for each POST; the teardown alone was about 2/3 of the SDK's share of a request in a profile); over stdio a warm call costs what the pool does."
    )
    return section

"""The MCP server, driven by the `mcp` SDK's own client: over stdio (`jupyter-sessionpool mcp`) and
over streamable HTTP (`/sessionpool/mcp` of a real `jupyter-sessionpool serve`)."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
from contextlib import asynccontextmanager

import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from servicekit import Service

pytestmark = pytest.mark.timeout(180)

TOOLS = {"execute_code", "list_sessions", "interrupt_session", "restart_session", "release_session",
         "upload_file", "download_file"}  # fmt: skip
PLOT = """\
import matplotlib
matplotlib.use("module://matplotlib_inline.backend_inline")
import matplotlib.pyplot as plt
plt.plot([1, 2, 3], [1, 4, 9])
plt.show()
print("plotted")"""


def text(result) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


@asynccontextmanager
async def over_stdio(tmp_path):
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "jupyter_sessionpool", "mcp", "--max-kernels", "3", "--min-idle", "1",
              "--root-dir", str(tmp_path / "sessions"), "--AsyncKernelPool.interrupt_timeout=3"],
        env=dict(os.environ),
    )  # fmt: skip
    with open(tmp_path / "mcp-stderr.log", "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            yield session


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    svc = Service(tmp_path_factory.mktemp("mcp"), "--max-kernels", "3", "--min-idle", "1").start()
    yield svc
    assert svc.stop() == 0, svc.log_tail()


@asynccontextmanager
async def over_http(service: Service, headers: dict[str, str] | None = None):
    http = create_mcp_http_client(headers=service.headers if headers is None else headers)
    async with http, streamable_http_client(f"{service.base}/sessionpool/mcp", http_client=http) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            yield session


async def check_the_tools(session, root) -> None:
    """What both transports must do: tools, state across calls, images, files, errors as tool errors."""
    assert {tool.name for tool in (await session.list_tools()).tools} == TOOLS
    first = await session.call_tool("execute_code", {"code": "x = 41", "session": "agent"})
    assert not first.is_error
    second = await session.call_tool("execute_code", {"code": "print('hello'); x + 1", "session": "agent"})
    assert not second.is_error and "hello" in text(second) and "42" in text(second), "state kept across calls"
    other = await session.call_tool("execute_code", {"code": "x", "session": "someone-else"})
    assert not other.is_error and "NameError" in text(other), "a user exception is a result, not a tool error"

    plotted = await session.call_tool("execute_code", {"code": PLOT, "session": "agent"})
    images = [block for block in plotted.content if block.type == "image"]
    assert len(images) == 1 and images[0].mime_type == "image/png"
    assert base64.b64decode(images[0].data).startswith(b"\x89PNG")
    assert "plotted" in text(plotted)

    listed = await session.call_tool("list_sessions", {})
    assert '"agent"' in text(listed) and '"someone-else"' in text(listed)

    up = await session.call_tool("upload_file", {"session": "agent", "path": "in/data.txt", "content": "payload"})
    assert not up.is_error
    read = await session.call_tool("execute_code", {"code": "open('in/data.txt').read()", "session": "agent"})
    assert "payload" in text(read)
    await session.call_tool("execute_code", {"code": "open('out.txt', 'w').write('from the kernel')", "session": "agent"})
    down = await session.call_tool("download_file", {"session": "agent", "path": "out.txt"})
    assert text(down) == "from the kernel"

    timed_out = await session.call_tool(
        "execute_code", {"code": "import time; print('slow'); time.sleep(30)", "session": "agent", "timeout": 0.5}
    )
    assert timed_out.is_error and text(timed_out).startswith("ExecutionTimeout")
    assert "42" in text(await session.call_tool("execute_code", {"code": "x + 1", "session": "agent"}))

    escape = await session.call_tool("download_file", {"session": "agent", "path": "../someone-else/x"})
    assert escape.is_error and text(escape).startswith("Forbidden")
    missing = await session.call_tool("download_file", {"session": "nobody", "path": "x"})
    assert missing.is_error and text(missing).startswith("NotFound")

    assert not (await session.call_tool("interrupt_session", {"session": "agent"})).is_error
    assert not (await session.call_tool("restart_session", {"session": "agent"})).is_error
    fresh = await session.call_tool("execute_code", {"code": "x", "session": "agent"})
    assert "NameError" in text(fresh), "a restarted session starts afresh"

    pid = text(await session.call_tool("execute_code", {"code": "import os; os.getpid()", "session": "doomed"}))
    os.kill(int(pid.strip()), signal.SIGKILL)
    lost = await session.call_tool("execute_code", {"code": "1", "session": "doomed"})
    if not lost.is_error:  # the death was not yet noticed: the cell itself may see it as KernelDied or run first
        lost = await session.call_tool("execute_code", {"code": "1", "session": "doomed"})
    assert lost.is_error and text(lost).split(":")[0] in ("SessionLost", "KernelDied")

    for name in ("agent", "someone-else", "doomed"):
        released = await session.call_tool("release_session", {"session": name})
        assert not released.is_error, text(released)
    assert not (root / "agent").exists()
    gone = await session.call_tool("release_session", {"session": "agent"})
    assert gone.is_error and text(gone).startswith("NotFound")


async def test_mcp_over_stdio(tmp_path):
    async with over_stdio(tmp_path) as session:
        await check_the_tools(session, tmp_path / "sessions")


async def test_mcp_over_streamable_http(service):
    async with over_http(service) as session:
        await check_the_tools(session, service.root)


async def test_mcp_over_http_needs_the_token(service):
    with pytest.raises(Exception):  # noqa: B017 - the SDK wraps the 401 in its own error types
        async with over_http(service, headers={}):
            pass


def test_mcp_without_the_sdk_names_the_extra(tmp_path):
    script = "import sys; sys.modules['mcp'] = None\nfrom jupyter_sessionpool.cli import main\nsys.exit(main(['mcp']))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "pip install 'jupyter_sessionpool[mcp]'" in out.stderr

"""The sessions API over real HTTP, against a real `jupyter-sessionpool serve` started here.

Every route, the token (both header forms), NDJSON streaming order, the client-disconnect
interrupt, the three clocks, a killed kernel, files (traversal attempts, oversized uploads),
the control path while every kernel is busy, bad input, and 200 sessions at once on a lean
kernel.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import time

import httpx
import pytest
from servicekit import Service, ndjson

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    svc = Service(
        tmp_path_factory.mktemp("service"),
        "--max-kernels", "4", "--min-idle", "1",
        "--SessionPoolApp.max_upload_size=100000", "--SessionPoolApp.max_code_size=20000",
        "--AsyncKernelPool.interrupt_timeout=3",
    ).start()  # fmt: skip
    yield svc
    assert svc.stop() == 0, svc.log_tail()


@pytest.fixture
async def client(service):
    async with httpx.AsyncClient(base_url=service.api, headers=service.headers, timeout=60) as c:
        yield c


async def run(client, session: str, code: str, **body) -> httpx.Response:
    """Execute ``code`` and return the response holding the final result only."""
    return await client.post(f"/{session}/execute", json={"code": code, **body}, headers={"Accept": "application/json"})


async def until(predicate, what: str, timeout: float = 30.0) -> None:
    """Poll the server (its state has no event a client could wait on) until ``predicate()`` holds."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


# ---- authentication -----------------------------------------------------------------------------


async def test_the_token_is_required_in_either_header_form(service):
    async with httpx.AsyncClient(base_url=service.api, timeout=30) as anonymous:
        refused = await anonymous.get("")
        assert refused.status_code == 401
        assert refused.json()["error"] == "Unauthorized"
        assert (await anonymous.get("", headers={"Authorization": "token wrong"})).status_code == 401
        put = await anonymous.put("/nobody", headers={"Authorization": "Bearer wrong"})
        assert put.status_code == 401 and put.json()["error"] == "Unauthorized"
        assert (await anonymous.get("", headers={"Authorization": f"token {service.token}"})).status_code == 200
        assert (await anonymous.get("", headers={"Authorization": f"Bearer {service.token}"})).status_code == 200
    assert "nobody" not in os.listdir(service.root), "a refused request must not create anything"


def test_serve_prints_where_it_listens_and_the_token(service):
    banner = "\n".join(service.banner)
    assert f"{service.api}" in banner
    assert f"token {service.token}" in banner


# ---- sessions -----------------------------------------------------------------------------------


async def test_put_gets_or_creates_get_describes_delete_releases(client, service):
    created = await client.put("/crud", json={"env": {"CRUD_FLAG": "on"}, "idle_timeout": 600})
    assert created.status_code == 201, created.text
    info = created.json()
    assert info["id"] == "crud" and info["state"] == "idle" and info["kernel_name"] == "python3"
    assert info["kernel"] == {"id": info["kernel_id"], "name": "python3", "pid": info["pid"], "execution_state": "idle"}
    assert info["created"].endswith("Z") and info["last_used"] and info["expires"]
    again = await client.put("/crud")
    assert again.status_code == 200 and again.json()["kernel_id"] == info["kernel_id"]
    cwd = (await run(client, "crud", "import os; os.getcwd(), os.environ['CRUD_FLAG']")).json()
    assert cwd["result"] == repr((str(service.root / "crud"), "on"))
    assert cwd["execution_count"] == 1, "the hidden set-up cell must not count"
    listed = (await client.get("")).json()
    assert "crud" in [s["id"] for s in listed]
    described = (await client.get("/crud")).json()
    assert described["state"] == "idle" and described["pid"] == info["pid"]
    gone = await client.delete("/crud")
    assert gone.status_code == 204
    assert (await client.get("/crud")).json()["error"] == "NotFound"
    assert not (service.root / "crud").exists(), "a released session's files go with it"
    assert "session 'crud' released" in service.log_tail(100_000), "the pool and the service log where the server logs"
    await until(lambda: _pid_gone(info["pid"]), "the released kernel to exit")


async def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_execute_creates_the_session_and_sessions_keep_their_own_state(client):
    assert (await run(client, "st-a", "x = 41")).status_code == 200
    assert (await run(client, "st-a", "x + 1")).json()["result"] == "42"
    other = (await run(client, "st-b", "x")).json()
    assert other["status"] == "error" and other["error"]["ename"] == "NameError"
    await asyncio.gather(client.delete("/st-a"), client.delete("/st-b"))


async def test_interrupt_and_restart(client, service):
    await run(client, "ir", "x = 1")
    interrupted = await client.post("/ir/interrupt")
    assert interrupted.status_code == 200 and interrupted.json()["interrupted"] is True
    restarted = await client.post("/ir/restart")
    assert restarted.status_code == 200 and restarted.json()["restarted"] is True
    fresh = (await run(client, "ir", "import os; os.getcwd(), 'x' in globals()")).json()
    assert fresh["result"] == repr((str(service.root / "ir"), False)), "a restarted session starts afresh in its directory"
    assert (await client.post("/nosuch/interrupt")).status_code == 404
    await client.delete("/ir")


# ---- execution: streaming -----------------------------------------------------------------------

WAIT_FOR_GO = """\
import os, time
print("started", flush=True)
while not os.path.exists("go"):
    time.sleep(0.01)
print("done")
"""


async def test_outputs_stream_before_the_cell_ends(client):
    await client.put("/stream")
    async with client.stream("POST", "/stream/execute", json={"code": WAIT_FOR_GO}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = response.aiter_lines()
        first = json.loads(await anext(lines))
        assert first == {"type": "stream", "output_type": "stream", "name": "stdout", "text": "started\n"}
        # the cell is still waiting: release it through the files API, then read the rest
        assert (await client.put("/stream/files/go", content=b"")).status_code == 201
        rest = ndjson([line async for line in lines])
    assert rest[-1]["type"] == "result" and rest[-1]["status"] == "ok"
    assert rest[-1]["stdout"] == "started\ndone\n"
    assert [e["text"] for e in rest[:-1] if e.get("output_type") == "stream"] == ["done\n"]
    await client.delete("/stream")


async def test_display_updates_and_clear_are_streamed(client):
    code = (
        "from IPython.display import display, clear_output\n"
        "h = display('one', display_id=True)\n"
        "h.update('two')\n"
        "print('gone')\n"
        "clear_output()\n"
        "print('kept')"
    )
    response = await client.post("/disp/execute", json={"code": code})
    events = ndjson(response.text.splitlines())
    kinds = [e["type"] for e in events[:-1]]
    assert kinds == ["display_data", "update_display_data", "stream", "clear_output", "stream"]
    assert all(e["output_type"] == e["type"] for e in events[:-1])
    assert events[0]["transient"]["display_id"] == events[1]["transient"]["display_id"]
    final = events[-1]
    assert final["type"] == "result" and [o["text"] for o in final["outputs"]] == ["kept\n"]
    await client.delete("/disp")


async def test_a_flood_of_output_streams_whole_and_in_order(client):
    events = ndjson((await client.post("/flood/execute", json={"code": "for i in range(20000): print(i)"})).text.splitlines())
    streamed = "".join(e["text"] for e in events[:-1])
    assert streamed == "".join(f"{i}\n" for i in range(20000)) == events[-1]["stdout"]
    await client.delete("/flood")


async def test_accept_json_returns_only_the_final_result(client):
    response = await run(client, "final", "print('hi'); 6 * 7")
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["type"] == "result" and body["status"] == "ok" and body["result"] == "42" and body["stdout"] == "hi\n"
    assert {"outputs", "execution_count", "error", "session", "kernel_id", "duration", "displays"} <= set(body)
    await client.delete("/final")


async def test_a_client_that_disconnects_mid_execute_interrupts_the_cell(client, service):
    code = (
        "import time\ninterrupted = False\nprint('started', flush=True)\n"
        "try:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    interrupted = True"
    )
    await client.put("/gone")
    async with httpx.AsyncClient(base_url=service.api, headers=service.headers, timeout=60) as leaving:
        async with leaving.stream("POST", "/gone/execute", json={"code": code}) as response:
            assert json.loads(await anext(response.aiter_lines()))["text"] == "started\n"
        # leaving the block closes the connection mid-cell
    t0 = time.monotonic()
    after = (await run(client, "gone", "interrupted")).json()
    assert after["result"] == "True", "the cell was not interrupted when its client went away"
    assert time.monotonic() - t0 < 30
    await client.delete("/gone")


async def test_a_client_waiting_for_the_final_result_only_interrupts_too_when_it_leaves(client, service):
    code = (
        "import time\ninterrupted = False\nopen('started', 'w').close()\n"
        "try:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    interrupted = True"
    )
    await client.put("/gone-json")
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
    body = json.dumps({"code": code})
    headers = {**service.headers, "Accept": "application/json", "Content-Type": "application/json"}
    await asyncio.to_thread(conn.request, "POST", "/sessionpool/api/sessions/gone-json/execute", body, headers)

    async def started() -> bool:
        return (await client.get("/gone-json/files/started")).status_code == 200

    await until(started, "the cell to start")
    conn.close()  # the client goes away without reading its answer
    after = (await run(client, "gone-json", "interrupted")).json()
    assert after["result"] == "True", "the cell was not interrupted when its client went away"
    await client.delete("/gone-json")


# ---- the three clocks ---------------------------------------------------------------------------


async def test_execution_timeout_interrupts_and_the_session_lives_on(client):
    await run(client, "slow", "y = 5")
    timed_out = await run(client, "slow", "import time; print('before'); time.sleep(30)", timeout=0.5)
    assert timed_out.status_code == 504
    assert timed_out.json()["error"] == "ExecutionTimeout"
    assert (await run(client, "slow", "y")).json()["result"] == "5", "an interrupted session keeps its state"
    streamed = ndjson((await client.post("/slow/execute", json={"code": "import time; print('x', flush=True); time.sleep(30)",
                                                                "timeout": 0.5})).text.splitlines())  # fmt: skip
    assert streamed[-1]["type"] == "error" and streamed[-1]["error"] == "ExecutionTimeout"
    await client.delete("/slow")


async def test_idle_timeout_expires_once_with_session_lost_and_activity_resets_it(client):
    created = (await client.put("/idle", json={"idle_timeout": 1.5})).json()
    for _ in range(6):  # activity every 0.4 s for 2.4 s: past the idle timeout, and never idle for it
        assert (await run(client, "idle", "1")).status_code == 200
        await asyncio.sleep(0.4)
    assert (await client.get("/idle")).json()["kernel_id"] == created["kernel_id"], "activity must reset the idle clock"

    async def expired() -> bool:
        return "idle" not in [s["id"] for s in (await client.get("")).json()]

    await until(expired, "the idle session to expire")
    lost = await client.get("/idle")
    assert lost.status_code == 410 and lost.json()["error"] == "SessionLost"
    assert "idle" in lost.json()["message"]
    assert (await client.get("/idle")).status_code == 404, "SessionLost is said once"
    assert (await run(client, "idle", "'fresh'")).json()["result"] == "'fresh'"
    await client.delete("/idle")


async def test_maximum_lifetime(tmp_path):
    svc = Service(tmp_path, "--min-idle", "0", "--max-kernels", "1", "--SessionPoolApp.max_lifetime=2",
                  "--ServerApp.base_url=/under/here/")  # fmt: skip
    svc.api = f"{svc.base}/under/here/sessionpool/api/sessions"  # the routes live under the server's base_url
    svc.start()
    assert svc.api in "\n".join(svc.banner)
    try:
        async with httpx.AsyncClient(base_url=svc.api, headers=svc.headers, timeout=60) as client:
            await run(client, "short", "x = 1")

            async def ended() -> bool:
                return not (await client.get("")).json()

            await until(ended, "the session's lifetime to end")
            lost = await run(client, "short", "x")
            assert lost.status_code == 410 and lost.json()["error"] == "SessionLost"
            assert "lifetime" in lost.json()["message"]
            fresh = (await run(client, "short", "x")).json()
            assert isinstance(fresh.get("error"), dict), fresh
            assert fresh["error"]["ename"] == "NameError", "never a fresh kernel posing as the old one"
    finally:
        assert svc.stop() == 0, svc.log_tail()


async def test_a_killed_kernel_answers_session_lost_once_then_a_fresh_session(client):
    await run(client, "victim", "x = 1")
    pid = (await client.get("/victim")).json()["pid"]
    os.kill(pid, signal.SIGKILL)

    async def noticed() -> bool:
        return (await client.get("/victim")).json()["state"] == "lost"

    await until(noticed, "the kernel's death to be noticed")
    lost = await run(client, "victim", "x")
    assert lost.status_code == 410 and lost.json()["error"] == "SessionLost"
    fresh = await run(client, "victim", "x")
    assert fresh.status_code == 200 and fresh.json()["error"]["ename"] == "NameError"
    assert (await client.get("/victim")).json()["pid"] != pid
    await client.delete("/victim")


# ---- the control path while every kernel is busy ------------------------------------------------


async def test_status_list_interrupt_and_delete_answer_while_every_kernel_is_busy(client, service):
    busy = [f"busy{i}" for i in range(4)]  # max_kernels is 4
    code = "import time\ntry:\n    print('started', flush=True); time.sleep(120)\nexcept KeyboardInterrupt:\n    pass"
    streams = []
    for name in busy:
        cm = client.stream("POST", f"/{name}/execute", json={"code": code})
        response = await cm.__aenter__()
        lines = response.aiter_lines()  # held: a dropped iterator is closed, and so is its connection
        streams.append((cm, lines))
        assert json.loads(await anext(lines))["text"] == "started\n"
    try:
        t0 = time.monotonic()
        listed = await client.get("")
        assert {s["state"] for s in listed.json() if s["id"] in busy} == {"busy"}, listed.json()
        assert (await client.get(f"/{busy[0]}")).json()["state"] == "busy"
        assert (await client.post(f"/{busy[1]}/interrupt")).json()["interrupted"] is True
        assert (await client.delete(f"/{busy[2]}")).status_code == 204
        assert time.monotonic() - t0 < 10, "the control path waited behind busy kernels"
    finally:
        for name in busy:
            await client.post(f"/{name}/interrupt")
        for cm, _ in streams:
            await cm.__aexit__(None, None, None)
        for name in busy:
            await client.delete(f"/{name}")


# ---- files --------------------------------------------------------------------------------------


async def test_files_upload_list_download_delete(client, service):
    await client.put("/fs")
    put = await client.put("/fs/files/data/in.csv", content=b"a,b\n1,2\n")
    assert put.status_code == 201 and put.json() == {"path": "data/in.csv", "size": 8}
    assert (await client.put("/fs/files/data/in.csv", content=b"a,b\n3,4\n")).status_code == 200
    seen = (await run(client, "fs", "open('data/in.csv').read()")).json()["result"]
    assert seen == repr("a,b\n3,4\n"), "an uploaded file is in the kernel's cwd"
    await run(client, "fs", "open('out.txt', 'w').write('made by the kernel')")
    listing = (await client.get("/fs/files/")).json()
    assert {(e["path"], e["type"]) for e in listing} >= {("data", "directory"), ("data/in.csv", "file"), ("out.txt", "file")}
    got = await client.get("/fs/files/out.txt")
    assert got.status_code == 200 and got.content == b"made by the kernel"
    assert (await client.get("/fs/files/missing.txt")).json()["error"] == "NotFound"
    assert (await client.delete("/fs/files/out.txt")).status_code == 204
    assert (await client.get("/fs/files/out.txt")).status_code == 404
    await client.delete("/fs")


def _raw(service: Service, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
    """A request with its path sent exactly as given (HTTP libraries normalise '..' away)."""
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=service.headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


async def test_paths_cannot_leave_the_session_directory(client, service):
    await client.put("/jail")
    await client.put("/other")
    await client.put("/other/files/secret.txt", content=b"other's")
    prefix = "/sessionpool/api/sessions/jail/files/"
    attempts = [
        ("GET", prefix + "../other/files/secret.txt"),
        ("GET", prefix + "../../other/secret.txt"),
        ("GET", prefix + "%2e%2e/other/secret.txt"),
        ("GET", prefix + "%2E%2E%2Fother%2Fsecret.txt"),
        ("GET", prefix + "/etc/passwd"),
        ("GET", prefix + "%2Fetc%2Fpasswd"),
        ("PUT", prefix + "../other/planted.txt"),
        ("PUT", prefix + "%2e%2e/other/planted.txt"),
        ("DELETE", prefix + "../other/secret.txt"),
    ]
    for method, path in attempts:
        status, body = await asyncio.to_thread(_raw, service, method, path, b"x" if method == "PUT" else None)
        assert 400 <= status < 500 and body.get("error") in ("Forbidden", "BadRequest", "NotFound"), (method, path, status)
    # symlinks made by the kernel that lead out: neither followed for reading nor for writing
    await run(client, "jail", f"import os; os.symlink('/etc', 'etc'); os.symlink({str(service.root / 'other')!r}, 'o')")
    assert (await client.get("/jail/files/etc/passwd")).status_code == 403
    assert (await client.get("/jail/files/o/secret.txt")).status_code == 403
    assert (await client.put("/jail/files/o/planted.txt", content=b"x")).status_code == 403
    assert (await client.delete("/jail/files/o")).status_code == 204, "deleting the link itself is fine"
    assert (service.root / "other" / "secret.txt").read_bytes() == b"other's"
    assert not (service.root / "other" / "planted.txt").exists()
    await asyncio.gather(client.delete("/jail"), client.delete("/other"))


async def test_oversized_uploads_are_refused_and_leave_nothing(client, service):
    await client.put("/big")
    with_length = await client.put("/big/files/big.bin", content=b"x" * 3_000_000)  # the limit is 100,000
    assert with_length.status_code == 413 and with_length.json()["error"] == "PayloadTooLarge"

    async def chunks():
        for _ in range(30):
            yield b"y" * 10_000  # chunked, no Content-Length: refused once past the limit

    chunked = await client.put("/big/files/chunked.bin", content=chunks())
    assert chunked.status_code == 413 and chunked.json()["error"] == "PayloadTooLarge", "the client hears why"
    assert not (service.root / "big" / "big.bin").exists() and not (service.root / "big" / "chunked.bin").exists()
    assert not any((service.root / ".uploads").iterdir()), "a refused upload left a partial file"
    assert (await client.put("/big/files/ok.bin", content=b"z" * 1000)).status_code == 201
    await client.delete("/big")


async def test_an_upload_cut_off_by_its_client_leaves_nothing(client, service):
    await client.put("/cut")

    def send_half() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
        conn.putrequest("PUT", "/sessionpool/api/sessions/cut/files/half.bin")
        conn.putheader("Authorization", f"token {service.token}")
        conn.putheader("Content-Length", "50000")
        conn.endheaders()
        conn.send(b"h" * 20000)  # then the client goes away mid-body
        conn.close()

    await asyncio.to_thread(send_half)

    async def cleaned() -> bool:
        return not any((service.root / ".uploads").iterdir())

    await until(cleaned, "the cut-off upload's partial file to go")
    assert not (service.root / "cut" / "half.bin").exists()
    await client.delete("/cut")


# ---- bad input ----------------------------------------------------------------------------------


async def test_bad_json_bad_ids_and_bad_fields_are_4xx(client):
    cases = [
        await client.post("/bad/execute", content=b"{not json"),
        await client.post("/bad/execute", content=b"[1, 2]"),
        await client.post("/bad/execute", json={"code": "1", "bogus": 1}),
        await client.post("/bad/execute", json={"timeout": 1}),
        await client.post("/bad/execute", json={"code": 42}),
        await client.post("/bad/execute", json={"code": "1", "timeout": -1}),
        await client.post("/bad/execute", json={"code": "1", "timeout": "soon"}),
        await client.put("/bad", json={"kernel_name": "no-such-kernel"}),
        await client.put("/bad", json={"env": {"A": 1}}),
        await client.put("/bad", json={"idle_timeout": 0}),
        await client.put("/a%20b"),
        await client.put("/.hidden"),
        await client.put("/" + "x" * 201),
        await client.put("/%00"),
        await client.get("/a%2Fb"),
    ]
    for response in cases:
        assert response.status_code == 400, (response.request.url, response.text)
        assert response.json()["error"] == "BadRequest" and response.json()["message"]
    too_big = await client.post("/bad/execute", json={"code": "x" * 30_000})
    assert too_big.status_code == 413 and too_big.json()["error"] == "PayloadTooLarge"
    huge = await client.post("/bad/execute", content=b'{"code": "' + b"y" * 2_000_000 + b'"}')
    assert huge.status_code == 413, "a body past the limit is refused before it is read whole"
    assert (await client.get("")).status_code == 200
    assert "bad" not in [s["id"] for s in (await client.get("")).json()], "bad input created a session"
    missing = await client.get("/nosuch")
    assert missing.status_code == 404 and missing.json()["error"] == "NotFound"
    no_route = await client.get("/nosuch/bogus")
    assert no_route.status_code == 404 and no_route.json()["error"] == "NotFound"
    wrong_method = await client.patch("/nosuch")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"] == "MethodNotAllowed"


# ---- many sessions at once ----------------------------------------------------------------------


async def test_200_sessions_execute_at_once_with_no_response_lost_or_misrouted(tmp_path):
    # the lean echo kernel: 200 ipykernels would need ~10 GB here
    n = 200
    svc = Service(tmp_path, "--max-kernels", str(n), "--min-idle", "0", "--AsyncKernelPool.kernel_name=echo",
                  "--AsyncKernelPool.startup_timeout=120", "--AsyncKernelPool.checkout_timeout=180").start()  # fmt: skip
    try:
        limits = httpx.Limits(max_connections=n + 10)
        async with httpx.AsyncClient(base_url=svc.api, headers=svc.headers, timeout=300, limits=limits) as client:

            async def one(i: int) -> tuple[int, list[dict]]:
                response = await client.post(f"/many-{i}/execute", json={"code": f"request {i} of many-{i}"})
                return response.status_code, ndjson(response.text.splitlines())

            answers = await asyncio.gather(*(one(i) for i in range(n)))
            for i, (status, events) in enumerate(answers):
                assert status == 200, events
                final = events[-1]
                assert final["type"] == "result" and final["session"] == f"many-{i}"
                assert final["stdout"].endswith(f"request {i} of many-{i}\n")
                assert [e["text"] for e in events[:-1]] == [f"request {i} of many-{i}\n"]
            assert len({events[-1]["kernel_id"] for _, events in answers}) == n
            assert len((await client.get("")).json()) == n
    finally:
        assert svc.stop() == 0, svc.log_tail()

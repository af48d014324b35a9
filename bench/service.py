"""Item 11: the service over HTTP: a prewarmed session's create and first result, a warm execute's
overhead over `pool.execute`, and 100-request bursts."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from _common import STATS_HEADERS, Parts, Section, Stats, Target, free_port, interleaved, ms, stats_rows

from jupyter_sessionpool import AsyncKernelPool

METHOD = """\
A `jupyter-sessionpool serve --max-kernels 8 --min-idle 2` subprocess on 127.0.0.1, driven
with keep-alive `http.client` connections and `Authorization: token T`. **Create + first
result**: `PUT /sessionpool/api/sessions/{{new id}}` then `POST …/{{id}}/execute`
`{{"code": "1 + 1"}}` with `Accept: application/json`, {reps} samples, each on a prewarmed
kernel (before each sample the bench polls `GET /sessionpool/api/pool` until two fresh kernels
are idle and none is starting or stopping, and deletes the session after it, untimed). **Warm execute**: `1 + 1` on a
session that already ran, over HTTP (final result only, and the NDJSON stream read to its
end) interleaved with `pool.execute("1 + 1", session=…)` of an in-process `AsyncKernelPool`
on the same machine, {warm_reps} rounds after {warmup} warm-up rounds; the overhead is the
difference of the p50s. **Bursts**: 100 requests sent at once from 100 threads (one connection
each, opened beforehand, released by a barrier), {bursts} bursts: `1 + 1` spread over 8 warm
sessions (so up to 8 cells run at once and the rest queue on their session), and
`GET …/sessions/{{id}}` while all 8 kernels run a cell that sleeps (the control path). Each
request is timed from the barrier to its complete answer."""


CREATE_WHY = (
    "a new session is two kernel round trips and two HTTP requests: the PUT runs the session's hidden "
    "set-up cell (its own working directory and env) and answers once it ran, then the execute runs "
    "the caller's cell. Here the PUT took {put} ms and the execute {execute} ms (p50), where a warm "
    "`pool.execute` in this process took {pool} ms: a cell's round trip on this machine alone is a third "
    "of the target"
)


class Client:
    """One keep-alive HTTP connection to the service."""

    def __init__(self, port: int, token: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.headers = {"Authorization": f"token {token}", "Accept": "application/json"}

    def call(self, method: str, path: str, body: Any = None, stream: bool = False) -> tuple[int, bytes]:
        headers = dict(self.headers)
        if stream:
            headers["Accept"] = "application/x-ndjson"
        data = None if body is None else json.dumps(body).encode()
        self.conn.request(method, "/sessionpool/api" + path, body=data, headers=headers)
        response = self.conn.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self.conn.close()


@contextmanager
def serve(*args: str) -> Iterator[tuple[int, str]]:
    """A `jupyter-sessionpool serve` subprocess; yields (port, token) once it listens."""
    port, token = free_port(), uuid.uuid4().hex
    home = Path(tempfile.mkdtemp(prefix="jsp-bench-serve-"))
    env = {**os.environ, "HOME": str(home), "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_DATA_DIR": str(home / "data")}
    log = open(home / "serve.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter_sessionpool", "serve", "--port", str(port), "--token", token,
         "--root-dir", str(home / "sessions"), *args],
        stdout=subprocess.PIPE, stderr=log, env=env, text=True,
    )  # fmt: skip
    try:
        while not (line := proc.stdout.readline()).startswith("jupyter-sessionpool serve: token"):
            if not line:
                raise RuntimeError(f"serve exited with {proc.wait()}; see {log.name}")
        yield port, token
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        log.close()


def quiet_and_prewarmed(client: Client, n: int) -> bool:
    """``n`` fresh kernels idle, and no kernel starting or stopping (no pool work beside the next sample)."""
    status, body = client.call("GET", "/pool")
    kernels = json.loads(body)["kernels"]
    fresh = sum(1 for k in kernels if k["state"] == "idle" and k["session"] is None and k["executions"] == 0)
    return fresh >= n and not any(k["state"] in ("starting", "stopping") for k in kernels)


def wait_prewarmed(client: Client, n: int, timeout: float = 120) -> None:
    """Poll the pool's snapshot until it is quiet with ``n`` fresh kernels (an HTTP client gets no event for it)."""
    deadline = time.monotonic() + timeout
    while not quiet_and_prewarmed(client, n):
        if time.monotonic() > deadline:
            raise TimeoutError("the service did not prewarm its kernels")
        time.sleep(0.02)


def burst(port: int, token: str, requests: list[tuple[str, str, Any]]) -> list[float]:
    """Send ``requests`` at once (a thread and a connection each); each one's seconds to its answer."""
    clients = [Client(port, token) for _ in requests]
    for c in clients:
        c.conn.connect()
    barrier = threading.Barrier(len(requests))
    times: list[float] = [0.0] * len(requests)
    failures: list[str] = []

    def one(i: int) -> None:
        method, path, body = requests[i]
        barrier.wait()
        t0 = time.perf_counter()
        status, answer = clients[i].call(method, path, body)
        times[i] = time.perf_counter() - t0
        if status != 200:
            failures.append(f"{status} {answer[:200]!r}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in clients:
        c.close()
    if failures:
        raise RuntimeError(f"{len(failures)} request(s) of a burst failed: {failures[:3]}")
    return times


async def measure(quick: bool) -> Section:
    reps, warm_reps, warmup, bursts = (20, 40, 5, 3) if quick else (100, 400, 30, 20)
    section = Section(
        "service",
        "11. The service over HTTP: create + first result, warm execute, 100-request bursts",
        METHOD.format(reps=reps, warm_reps=warm_reps, warmup=warmup, bursts=bursts),
    )
    with serve("--max-kernels", "8", "--min-idle", "2") as (port, token):
        client = Client(port, token)

        # ---- a prewarmed session's create and first result ----
        def create_and_first() -> Parts:
            wait_prewarmed(client, 2)
            name = f"b{uuid.uuid4().hex[:10]}"
            t0 = time.perf_counter()
            status, _ = client.call("PUT", f"/sessions/{name}")
            t1 = time.perf_counter()
            status2, body = client.call("POST", f"/sessions/{name}/execute", {"code": "1 + 1"})
            t2 = time.perf_counter()
            assert status == 201 and status2 == 200 and json.loads(body)["result"] == "2", (status, status2, body)
            client.call("DELETE", f"/sessions/{name}")
            return Parts({"PUT (create)": t1 - t0, "execute 1 + 1": t2 - t1, "create + first 1 + 1": t2 - t0})

        created = await interleaved({"create": create_and_first}, reps, warmup=2)
        section.table(STATS_HEADERS, stats_rows(created, None))

        # ---- a warm execute: HTTP against pool.execute ----
        async with AsyncKernelPool(max_kernels=1, min_idle=1) as pool:
            await pool.execute("1 + 1", session="w")
            client.call("POST", "/sessions/w/execute", {"code": "1 + 1"})

            def http_json() -> None:
                status, _ = client.call("POST", "/sessions/w/execute", {"code": "1 + 1"})
                assert status == 200

            def http_stream() -> None:
                status, _ = client.call("POST", "/sessions/w/execute", {"code": "1 + 1"}, stream=True)
                assert status == 200

            warm = await interleaved(
                {
                    "pool.execute (in process)": lambda: pool.execute("1 + 1", session="w"),
                    "HTTP execute, Accept: application/json": http_json,
                    "HTTP execute, NDJSON stream": http_stream,
                },
                warm_reps,
                warmup,
            )
        client.call("DELETE", "/sessions/w")
        section.table(STATS_HEADERS, stats_rows(warm, "pool.execute (in process)"))
        p50 = {name: Stats.of(xs).p50 for name, xs in warm.items()}
        first = Stats.of(created["create + first 1 + 1"])
        why = CREATE_WHY.format(put=ms(Stats.of(created["PUT (create)"]).p50),
                                execute=ms(Stats.of(created["execute 1 + 1"]).p50), pool=ms(p50["pool.execute (in process)"]))
        for label, value, limit in (("p50", first.p50, 20), ("p99", first.p99, 60)):
            section.targets.append(Target(f"prewarmed session create + first `1 + 1` over HTTP, {label}", value * 1000,
                                          limit, "ms", why))  # fmt: skip
        overhead = p50["HTTP execute, Accept: application/json"] - p50["pool.execute (in process)"]
        section.targets.append(Target("warm execute over HTTP minus pool.execute, p50", overhead * 1000, 2, "ms"))
        section.notes.append(
            f"NDJSON stream minus pool.execute, p50: {ms(p50['HTTP execute, NDJSON stream'] - p50['pool.execute (in process)'])} ms."
        )

        # ---- bursts of 100 ----
        sessions = [f"s{i}" for i in range(8)]
        for name in sessions:
            client.call("POST", f"/sessions/{name}/execute", {"code": "1 + 1"})
        executes: list[float] = []
        walls: list[float] = []
        for _ in range(bursts):
            t0 = time.perf_counter()
            times = await asyncio.to_thread(
                burst, port, token, [("POST", f"/sessions/{sessions[i % 8]}/execute", {"code": "1 + 1"}) for i in range(100)]
            )
            walls.append(time.perf_counter() - t0)
            executes += times
        statuses: list[float] = []
        sleeper = [Client(port, token) for _ in sessions]
        for _ in range(bursts):
            running = [
                threading.Thread(target=c.call, args=("POST", f"/sessions/{name}/execute", {"code": "import time; time.sleep(3)"}))
                for c, name in zip(sleeper, sessions)
            ]
            for t in running:
                t.start()

            def all_busy() -> bool:
                status, body = client.call("GET", "/sessions")
                return sum(s["state"] == "busy" for s in json.loads(body)) == len(sessions)

            while not all_busy():
                await asyncio.sleep(0.01)
            statuses += await asyncio.to_thread(burst, port, token, [("GET", f"/sessions/{sessions[i % 8]}", None) for i in range(100)])
            for t in running:
                await asyncio.to_thread(t.join)
        for c in sleeper:
            c.close()
        client.close()
    rows = []
    for label, xs in (("100 × execute `1 + 1` over 8 sessions, per request", executes),
                      ("100 × execute, the whole burst", walls),
                      ("100 × GET session while 8 kernels are busy, per request", statuses)):  # fmt: skip
        s = Stats.of(xs)
        rows.append([label, str(s.n), ms(s.p50), ms(s.p99), ms(s.max)])
    section.table(["burst", "n", "p50 ms", "p99 ms", "max ms"], rows)
    section.raw = {"create": created, "warm": warm, "burst_execute": executes, "burst_wall": walls, "burst_status": statuses}
    section.notes.append(
        "The control-path burst is answered by the server's one event loop, request after request: none waits "
        "on a kernel (every kernel runs a 3 s cell meanwhile), so its p99 is the queue of 100 requests in front "
        "of one loop, not a kernel."
    )
    section.notes.append(
        "A burst's 100 executes run at most 8 at a time (one per session's kernel, FIFO on each), so a "
        "request's time includes its place in its session's queue: the p99 is about 100/8 round trips."
    )
    return section

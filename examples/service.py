"""A tiny code-execution service on AsyncKernelPool: one TCP connection is one session.

    python examples/service.py --port 8765 &
    printf 'x = 41\nx + 1\n' | nc 127.0.0.1 8765      # -> {"status": "ok", "result": "42", ...} per line

Each line a client sends is run on that connection's kernel, and one JSON line comes back.
Connections run concurrently; a client's variables live until it disconnects, then its
session is released. The service only awaits; the pool never blocks it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json

from jupyter_sessionpool import AsyncKernelPool, PoolError

_ids = itertools.count(1)


async def serve_client(pool: AsyncKernelPool, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    session = f"client-{next(_ids)}"
    try:
        while line := await reader.readline():
            try:
                r = await pool.execute(line.decode(), session=session, timeout=30)
                reply = {"status": r.status, "result": r.result, "stdout": r.stdout, "error": r.error}
            except PoolError as exc:
                reply = {"status": "pool-error", "error": f"{type(exc).__name__}: {exc}"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
    finally:
        writer.close()
        await pool.release(session)


async def main(port: int, max_kernels: int) -> None:
    async with AsyncKernelPool(max_kernels=max_kernels, min_idle=1) as pool:
        server = await asyncio.start_server(lambda r, w: serve_client(pool, r, w), "127.0.0.1", port)
        print(f"serving on 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
        async with server:
            await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--max-kernels", type=int, default=4)
    args = parser.parse_args()
    try:
        asyncio.run(main(args.port, args.max_kernels))
    except KeyboardInterrupt:
        pass

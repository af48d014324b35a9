"""Item 6: the bookkeeping alone, checkout + check-in through ``Books`` with fake kernels."""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable

from _common import Section, Stats, Target, percentile

from jupyter_sessionpool._state import Books

METHOD = """\
`Books` (the pool's pure state machine) with no kernels: slots are marked started by
hand. One operation is `checkout(session)` (granted at once) followed by `checkin(slot)`,
single thread. Throughput: {batches} batches of {ops:,} operations, each batch timed as
a whole; the table gives the median batch and the slowest. Latency: {ops:,} operations
each timed alone. Variants: one bound session on a 4-kernel book; anonymous leases on a
4-kernel book; 16 and 64 bound sessions on a book of as many kernels, used round-robin
(`settle()` looks at every kernel, so its cost grows with their number). *Queued*: the
situation of item 4, all 4 kernels lent to anonymous leases and {depth:,} anonymous
checkouts waiting; one operation is a check-in (which grants the kernel to the head of
the queue) plus a new checkout joining the tail, so the queue stays {depth:,} deep
({queued_ops:,} operations per batch: it is that much slower)."""

QUEUED_WHY = (
    "`Books.settle()` calls `_pick()` for every waiter, and `_plan()` calls `_needs_new_kernel()` for every "
    "anonymous waiter, scanning all slots each time: O(waiters x kernels) per check-in and checkout "
    "(`_state.py`; shares in the profile notes)."
)

DEPTH = 1000

VARIANTS = {  # name: (kernels in the book, sessions used round-robin)
    "1 session, 4 kernels": (4, ["a"]),
    "anonymous, 4 kernels": (4, [None]),
    "16 sessions, 16 kernels": (16, [f"s{i}" for i in range(16)]),
    "64 sessions, 64 kernels": (64, [f"s{i}" for i in range(64)]),
}


def operation(kernels: int, sessions: list[str | None]) -> Callable[[], None]:
    """A checkout + check-in on a book whose fake kernels are started and already bound to ``sessions``."""
    books = Books(max_kernels=kernels, min_idle=0, start_retries=2, clock=time.monotonic)
    for session in sessions:
        _, fx = books.checkout(session)
        for slot in fx.start:
            fx = books.started(slot)
        books.checkin(fx.granted[0][1])
    turn = itertools.cycle(sessions)

    def op() -> None:
        _, fx = books.checkout(next(turn))
        books.checkin(fx.granted[0][1])

    return op


def queued_operation(kernels: int, depth: int) -> Callable[[], None]:
    """A check-in that grants the head of a ``depth``-deep anonymous queue, plus a checkout joining its tail."""
    books = Books(max_kernels=kernels, min_idle=0, start_retries=2, clock=time.monotonic)
    for _ in range(kernels):  # all ask before any kernel is up: each one starts a kernel
        books.checkout(None)
    starting = [slot for slot in books.slots.values() if slot.state.value == "starting"]
    lent = deque(granted for slot in starting for _, granted in books.started(slot).granted)
    for _ in range(depth):
        books.checkout(None)
    assert len(lent) == kernels and len(books.waiters) == depth

    def op() -> None:
        lent.extend(s for _, s in books.checkin(lent.popleft()).granted)
        books.checkout(None)

    return op


def throughput(op: Callable[[], None], ops: int, batches: int) -> list[float]:
    """Operations per second of each batch."""
    rates = []
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(ops):
            op()
        rates.append(ops / (time.perf_counter() - t0))
    return rates


def latencies(op: Callable[[], None], ops: int) -> list[float]:
    """Seconds of each operation, timed alone."""
    out = []
    clock = time.perf_counter
    for _ in range(ops):
        t0 = clock()
        op()
        out.append(clock() - t0)
    return out


async def measure(quick: bool) -> Section:
    ops, batches = (2_000, 3) if quick else (20_000, 9)
    section = Section(
        "books",
        "6. Bookkeeping alone (`Books`, no kernels)",
        METHOD.format(ops=ops, batches=batches, depth=DEPTH, queued_ops=ops // 100),
    )
    rows = []
    # name: (operation, how many operations per batch); the queued one is ~500x slower, so it gets fewer
    ops_of = {name: (operation(kernels, sessions), ops) for name, (kernels, sessions) in VARIANTS.items()}
    ops_of[f"anonymous, 4 kernels, {DEPTH:,} queued"] = (queued_operation(4, DEPTH), ops // 100)
    for name, (op, count) in ops_of.items():
        throughput(op, count // 10, 1)  # warm-up
        rates = throughput(op, count, batches)
        lat = latencies(op, count)
        section.raw[name] = {"ops_per_s": rates, "latency_s": lat}
        p50 = percentile(rates, 50)
        rows.append(
            [
                name,
                f"{p50:,.0f}",
                f"{min(rates):,.0f}",
                f"{Stats.of(lat).p50 * 1e6:.1f}",
                f"{Stats.of(lat).p99 * 1e6:.1f}",
            ]
        )
        why = QUEUED_WHY if "queued" in name else ""
        section.targets.append(Target(f"checkout+check-in per second ({name})", p50, 50_000, "/s", why, True))
    section.table(["variant", "ops/s median batch", "ops/s slowest batch", "p50 µs/op", "p99 µs/op"], rows)
    return section

"""The bookkeeping state machine alone: every state and transition, no kernels, no I/O."""

from __future__ import annotations

import pytest

from jupyter_sessionpool._state import Books, KernelState, Slot
from jupyter_sessionpool.errors import KernelStartError, PoolClosed, SessionLost


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def books(clock: Clock, max_kernels: int = 2, min_idle: int = 0, start_retries: int = 1) -> Books:
    return Books(max_kernels, min_idle, start_retries, clock)


def start_all(b: Books, fx) -> list[Slot]:
    """Play the pool's part: every slot the effects asked to start comes up."""
    started = list(fx.start)
    for slot in started:
        b.started(slot)
    return started


# ---- checkout ------------------------------------------------------------------------


def test_lazy_pool_starts_nothing_until_asked(clock):
    b = books(clock)
    assert b.settle().start == []
    waiter, fx = b.checkout("a")
    assert len(fx.start) == 1 and fx.start[0].state is KernelState.STARTING
    assert list(b.waiters) == [waiter]


def test_started_kernel_goes_to_the_waiter_and_binds_the_session(clock):
    b = books(clock)
    waiter, fx = b.checkout("a")
    (slot,) = fx.start
    fx = b.started(slot)
    assert fx.granted == [(waiter, slot)]
    assert slot.state is KernelState.BUSY and slot.session == "a" and b.bound["a"] is slot
    assert b.counters["started"] == 1 and b.counters["checkouts"] == 1


def test_idle_bound_kernel_is_granted_at_once(clock):
    b = books(clock)
    _, fx = b.checkout("a")
    (slot,) = start_all(b, fx)
    b.checkin(slot)
    assert slot.state is KernelState.IDLE
    waiter, fx = b.checkout("a")
    assert fx.granted == [(waiter, slot)] and fx.start == []


def test_same_session_queues_fifo_on_its_own_kernel(clock):
    b = books(clock, max_kernels=4)
    _, fx = b.checkout("a")
    (slot,) = start_all(b, fx)
    w2, fx2 = b.checkout("a")
    w3, fx3 = b.checkout("a")
    assert fx2.granted == [] and fx3.granted == [] and fx2.start == [] and fx3.start == []
    assert b.checkin(slot).granted == [(w2, slot)]
    assert b.checkin(slot).granted == [(w3, slot)]


def test_different_sessions_get_different_kernels(clock):
    b = books(clock, max_kernels=2)
    _, fa = b.checkout("a")
    _, fb = b.checkout("b")
    a, bb = start_all(b, fa) + start_all(b, fb)
    assert a is not bb and b.bound == {"a": a, "b": bb}


def test_never_more_than_max_kernels(clock):
    b = books(clock, max_kernels=2)
    b.checkout("a")
    b.checkout("b")
    _, fx = b.checkout("c")
    assert fx.start == [] and len(b.slots) == 2 and len(b.waiters) == 3


def test_anonymous_lease_reuses_anonymous_kernels_and_keeps_fresh_ones_for_sessions(clock):
    b = books(clock, max_kernels=2, min_idle=1)
    (fresh,) = start_all(b, b.settle())
    w, fx = b.checkout(None)
    assert fx.granted == [(w, fresh)] and fresh.anonymous
    (second,) = start_all(b, fx)  # min_idle refills
    b.checkin(fresh)
    w2, fx2 = b.checkout(None)
    assert fx2.granted == [(w2, fresh)], "anonymous leases reuse the spent anonymous kernel"
    w3, fx3 = b.checkout("a")
    assert fx3.granted == [(w3, second)]


def test_a_kernel_that_served_anonymously_never_goes_to_a_named_session(clock):
    b = books(clock, max_kernels=1)
    _, fx = b.checkout(None)
    (slot,) = start_all(b, fx)
    b.checkin(slot)
    waiter, fx = b.checkout("a")
    assert fx.granted == []
    assert fx.stop == [(slot, False)], "the spent anonymous kernel is evicted to make room"
    fx = b.removed(slot)
    (fresh,) = start_all(b, fx)
    assert fresh is not slot and b.bound["a"] is fresh


def test_cancelled_waiter_is_forgotten(clock):
    b = books(clock, max_kernels=1)
    _, fx = b.checkout("a")
    (slot,) = start_all(b, fx)
    waiter, _ = b.checkout("b")
    b.cancel(waiter)
    assert list(b.waiters) == []


# ---- check-in --------------------------------------------------------------------------


def test_checkin_with_discard_stops_the_kernel_and_marks_the_session_lost(clock):
    b = books(clock)
    _, fx = b.checkout("a")
    (slot,) = start_all(b, fx)
    fx = b.checkin(slot, discard="its cell timed out")
    assert fx.stop == [(slot, True)] and slot.state is KernelState.STOPPING
    with pytest.raises(SessionLost, match="timed out"):
        b.checkout("a")
    _, fx = b.checkout("a")  # only once
    assert fx.granted == [] and "a" not in b.lost


def test_discard_fails_callers_already_queued_on_the_session(clock):
    b = books(clock)
    _, fx = b.checkout("a")
    (slot,) = start_all(b, fx)
    queued, _ = b.checkout("a")
    fx = b.checkin(slot, discard="its kernel died")
    assert [(w, type(e)) for w, e in fx.failed] == [(queued, SessionLost)]
    assert "a" not in b.lost, "queued callers were told; the next new call is not told again"


def test_checkin_of_a_slot_already_stopping_is_ignored(clock):
    b = books(clock)
    _, fx = b.checkout("a")
    (slot,) = start_all(b, fx)
    b.release("a")
    assert b.checkin(slot).stop == []
    assert slot.state is KernelState.STOPPING


# ---- death -----------------------------------------------------------------------------------


def test_idle_death_marks_dead_and_the_next_call_hears_session_lost(clock):
    b = books(clock)
    _, fx = b.checkout("a")
    (slot,) = start_all(b, fx)
    b.checkin(slot)
    b.died(slot)
    assert slot.state is KernelState.DEAD and b.counters["died"] == 1
    b.removed(slot)
    with pytest.raises(SessionLost, match="died"):
        b.checkout("a")


def test_dead_kernel_does_not_count_against_max_kernels(clock):
    b = books(clock, max_kernels=1)
    _, fx = b.checkout("a")
    (slot,) = start_all(b, fx)
    b.died(slot)
    _, fx = b.checkout("b")
    assert len(fx.start) == 1


def test_death_of_a_stopping_or_starting_kernel_is_not_a_death(clock):
    b = books(clock)
    _, fx = b.checkout("a")
    (starting,) = fx.start
    assert b.died(starting).stop == [] and starting.state is KernelState.STARTING
    b.started(starting)
    b.release("a")
    b.died(starting)
    assert b.counters["died"] == 0


def test_min_idle_refills_after_death(clock):
    b = books(clock, max_kernels=2, min_idle=1)
    (slot,) = start_all(b, b.settle())
    fx = b.died(slot)
    assert len(fx.start) == 1


# ---- start failures -------------------------------------------------------------------------


def test_start_failure_backs_off_then_fails_waiters_after_retries(clock):
    b = books(clock, max_kernels=2, start_retries=1)
    waiter, fx = b.checkout("a")
    (slot,) = fx.start
    error = KernelStartError("python3", "boom", "stderr tail")
    fx = b.start_failed(slot, error)
    assert fx.failed == [] and fx.start == [] and fx.retry_at == pytest.approx(100.2)
    clock.now = 100.3
    (retry,) = b.settle().start
    fx = b.start_failed(retry, error)
    assert fx.failed == [(waiter, error)] and error.attempts == 2
    assert b.counters["start_failures"] == 2 and b.slots == {}


def test_failed_starts_do_not_disturb_sessions_that_have_kernels(clock):
    b = books(clock, max_kernels=2, start_retries=0)
    _, fx = b.checkout("a")
    (a,) = start_all(b, fx)
    queued_a, _ = b.checkout("a")
    waiter_b, fx = b.checkout("b")
    fx = b.start_failed(fx.start[0], KernelStartError("python3", "boom"))
    assert [w for w, _ in fx.failed] == [waiter_b]
    assert b.checkin(a).granted == [(queued_a, a)]


def test_prewarm_stops_after_failures_until_the_next_checkout(clock):
    b = books(clock, max_kernels=2, min_idle=1, start_retries=0)
    (slot,) = b.settle().start
    b.start_failed(slot, KernelStartError("python3", "boom"))
    assert b.prewarm_suspended and b.settle().start == []
    _, fx = b.checkout("a")
    assert not b.prewarm_suspended and len(fx.start) == 2  # the session's kernel and the prewarm


# ---- release, restart, expiry, close --------------------------------------------------------


def test_release_stops_the_kernel_and_never_reuses_it(clock):
    b = books(clock, max_kernels=1)
    _, fx = b.checkout("a")
    (slot,) = start_all(b, fx)
    b.checkin(slot)
    released, fx = b.release("a")
    assert released and fx.stop == [(slot, False)] and "a" not in b.bound
    assert b.counters["released"] == 1
    _, fx = b.checkout("b")
    assert fx.granted == [] and fx.start == []  # the stopping kernel still occupies the only place
    (fresh,) = start_all(b, b.removed(slot))
    assert fresh is not slot and b.bound == {"b": fresh}


def test_release_of_a_busy_session_kills_it_and_fails_its_queue(clock):
    b = books(clock)
    _, fx = b.checkout("a")
    (slot,) = start_all(b, fx)
    queued, _ = b.checkout("a")
    _, fx = b.release("a")
    assert fx.stop == [(slot, True)]
    assert [(w, str(e)) for w, e in fx.failed] == [(queued, str(SessionLost("a", "released")))]
    assert "a" not in b.lost


def test_release_of_an_unknown_session_is_false(clock):
    assert books(clock).release("nope")[0] is False


def test_restart_gives_the_session_a_fresh_kernel_without_session_lost(clock):
    b = books(clock)
    _, fx = b.checkout("a")
    (slot,) = start_all(b, fx)
    b.checkin(slot)
    restarted, fx = b.restart("a")
    assert restarted and fx.stop == [(slot, False)]
    _, fx = b.checkout("a")
    assert len(fx.start) == 1


def test_expire_releases_only_sessions_idle_long_enough(clock):
    b = books(clock)
    _, fx = b.checkout("a")
    (slot,) = start_all(b, fx)
    b.checkin(slot)
    clock.now += 5
    assert b.expire("a", idle_for=10).stop == []
    clock.now += 6
    assert b.expire("a", idle_for=10).stop == [(slot, False)]


def test_close_fails_waiters_and_stops_everything(clock):
    b = books(clock, max_kernels=1)
    _, fx = b.checkout("a")
    (slot,) = start_all(b, fx)
    waiter, _ = b.checkout("b")
    fx = b.close()
    assert [(w, type(e)) for w, e in fx.failed] == [(waiter, PoolClosed)]
    assert fx.stop == [(slot, True)]
    with pytest.raises(PoolClosed):
        b.checkout("a")


def test_close_kills_kernels_nobody_used_and_asks_used_ones_to_exit(clock):
    b = books(clock, max_kernels=3)
    (a,) = start_all(b, b.checkout("a")[1])
    b.checkin(a)
    fresh, starting = b.set_min_idle(2).start
    b.started(fresh)
    assert (a.state, fresh.state, starting.state) == (KernelState.IDLE, KernelState.IDLE, KernelState.STARTING)
    stops = dict(b.close().stop)
    assert stops == {a: False, fresh: True, starting: True}


def test_lowering_min_idle_stops_only_the_fresh_kernels_nobody_needs(clock):
    b = books(clock, max_kernels=4, min_idle=3)
    assert len(start_all(b, b.settle())) == 3
    _, fx = b.checkout("a")
    [(_, a)], [refill] = fx.granted, fx.start
    b.checkin(a)
    fx = b.set_min_idle(1)  # two fresh idle and one starting for one place: two go, the least advanced first
    stopped = [slot for slot, now in fx.stop if now]
    assert len(fx.stop) == len(stopped) == 2 and stopped[0] is refill and a not in stopped
    assert all(slot.state is KernelState.STOPPING for slot in stopped) and fx.start == []
    assert b.set_min_idle(3).stop == [] and b.set_min_idle(2).stop == []


def test_every_state_is_reachable_and_named():
    assert [s.value for s in KernelState] == ["starting", "idle", "busy", "dead", "stopping"]


def test_anonymous_demand_grows_the_pool_while_anonymous_kernels_are_busy(clock):
    b = books(clock, max_kernels=3)
    _, fx = b.checkout(None)
    (first,) = start_all(b, fx)
    assert first.state is KernelState.BUSY and first.anonymous
    _, fx = b.checkout(None)
    assert len(fx.start) == 1, "a second anonymous caller gets a new kernel while there is room"


def test_a_deep_queue_costs_settle_nothing_while_no_kernel_is_free(clock, monkeypatch):
    b = books(clock, max_kernels=2)
    for _ in range(2):
        start_all(b, b.checkout(None)[1])
    for _ in range(500):
        b.checkout(None)
    picks = []
    original = b._pick
    monkeypatch.setattr(b, "_pick", lambda session, *free: picks.append(session) or original(session, *free))
    b.checkout(None)
    assert picks == [], "nothing is free: no waiter is even looked at"
    busy = next(iter(b.slots.values()))
    fx = b.checkin(busy)
    assert len(fx.granted) == 1 and len(picks) == 1, "one kernel freed: only the head of the queue is looked at"


def test_only_as_many_spent_kernels_are_evicted_as_sessions_need(clock):
    b = books(clock, max_kernels=3)
    spent = [start_all(b, b.checkout(None)[1])[0] for _ in range(3)]
    for slot in spent:
        b.checkin(slot)
    _, fx = b.checkout("a")
    assert len(fx.stop) == 1 and fx.stop[0][0] in spent, "one session needs one place"


# ---- start retries are per attempt chain ------------------------------------------------------


def test_one_failed_start_of_several_is_retried_and_fails_nobody(clock):
    """3 of 4 concurrent starts fail once: each is retried, and all 4 callers get kernels."""
    b = books(clock, max_kernels=4, start_retries=2)
    waiters, slots = [], []
    for name in "abcd":
        w, fx = b.checkout(name)
        waiters.append(w)
        slots += fx.start
    assert len(slots) == 4
    error = KernelStartError("python3", "boom")
    for slot in slots[:3]:
        fx = b.start_failed(slot, error)
        assert fx.failed == [] and fx.retried == [slot]
    clock.now += 1
    retries = b.settle().start
    assert [s.attempt for s in retries] == [2, 2, 2]
    granted = [w for s in [slots[3], *retries] for w, _ in b.started(s).granted]
    assert sorted(w.session for w in granted) == list("abcd")


def test_a_chain_fails_only_its_own_waiter_once_its_retries_are_spent(clock):
    b = books(clock, max_kernels=2, start_retries=1)
    wa, fa = b.checkout("a")
    wb, fb = b.checkout("b")
    (sa,), (sb,) = fa.start, fb.start
    error = KernelStartError("python3", "boom")
    b.start_failed(sa, error)
    clock.now += 1
    (retry,) = b.settle().start
    assert retry.attempt == 2
    fx = b.start_failed(retry, error)
    assert [w for w, _ in fx.failed] == [wb], "the last waiter loses; the other start still serves the first"
    assert error.attempts == 2
    assert b.started(sb).granted == [(wa, sb)]


def test_an_exhausted_chain_fails_nobody_while_other_starts_cover_every_waiter(clock):
    b = books(clock, max_kernels=3, min_idle=1, start_retries=0)
    (prewarm,) = b.settle().start
    w, fx = b.checkout("a")
    fx = b.start_failed(prewarm, KernelStartError("python3", "boom"))
    assert fx.failed == [] and list(b.waiters) == [w]


def test_every_caller_queued_on_the_failed_new_session_fails_together(clock):
    b = books(clock, max_kernels=2, start_retries=0)
    w1, fx = b.checkout("a")
    w2, _ = b.checkout("a")
    fx = b.start_failed(fx.start[0], KernelStartError("python3", "boom"))
    assert [w for w, _ in fx.failed] == [w1, w2] and not b.waiters


def test_a_retry_waiting_out_its_back_off_keeps_its_place(clock):
    b = books(clock, max_kernels=1, start_retries=1)
    _, fx = b.checkout("a")
    b.start_failed(fx.start[0], KernelStartError("python3", "boom"))
    _, fx = b.checkout("b")
    assert fx.start == [], "the only place is held by a's retry"
    clock.now += 1
    (retry,) = b.settle().start
    assert retry.attempt == 2


# ---- evicting idle sessions (opt-in) ----------------------------------------------------------


def full_of_idle_sessions(clock, names="abc", evict=True) -> tuple[Books, dict[str, Slot]]:
    b = books(clock, max_kernels=len(names))
    b.evict_idle = evict
    slots = {}
    for name in names:
        clock.now += 1
        (slot,) = start_all(b, b.checkout(name)[1])
        slots[name] = slot
    for name in names:  # check in in this order: a is the least recently used
        clock.now += 1
        b.checkin(slots[name])
    return b, slots


def test_a_full_pool_evicts_the_least_recently_used_idle_session(clock):
    b, slots = full_of_idle_sessions(clock)
    b.checkin(b.checkout("a")[1].granted[0][1])  # a is used again: b is now the oldest
    w, fx = b.checkout("new")
    assert fx.stop == [(slots["b"], False)] and fx.evicted == ["b"]
    assert b.counters["evicted"] == 1 and "b" not in b.bound
    assert b.settle().stop == [], "one eviction per kernel needed, not one per settle"
    (fresh,) = start_all(b, b.removed(slots["b"]))
    assert b.bound["new"] is fresh
    with pytest.raises(SessionLost, match="evicted"):
        b.checkout("b")


def test_eviction_never_takes_a_busy_session_or_one_with_queued_callers(clock):
    b, slots = full_of_idle_sessions(clock)
    b.checkout("a")  # a is busy now
    b.checkout("b")  # b busy ...
    b.checkout("b")  # ... with a caller queued on it
    _, fx = b.checkout("new")
    assert fx.evicted == ["c"], "only c is idle with nobody queued"
    _, fx = b.checkout("newer")
    assert fx.evicted == [] and fx.stop == []


def test_eviction_is_off_by_default(clock):
    b, _ = full_of_idle_sessions(clock, evict=False)
    _, fx = b.checkout("new")
    assert fx.stop == [] and fx.evicted == [] and b.counters["evicted"] == 0


def test_spent_anonymous_kernels_go_before_any_idle_session(clock):
    b = books(clock, max_kernels=2)
    b.evict_idle = True
    (a,) = start_all(b, b.checkout("a")[1])
    (anon,) = start_all(b, b.checkout(None)[1])
    b.checkin(a)
    b.checkin(anon)
    _, fx = b.checkout("new")
    assert fx.stop == [(anon, False)] and fx.evicted == [] and b.bound["a"] is a


# ---- bounded memory ----------------------------------------------------------------------------


def test_lost_sessions_are_remembered_up_to_a_bound(clock):
    from jupyter_sessionpool._state import _LOST_MEMORY

    b = books(clock, max_kernels=1)
    for i in range(_LOST_MEMORY + 10):
        (slot,) = start_all(b, b.checkout(f"s{i}")[1])
        b.checkin(slot, discard="gone")
        b.removed(slot)
    assert len(b.lost) == _LOST_MEMORY
    assert "s0" not in b.lost and f"s{_LOST_MEMORY + 9}" in b.lost


# ---- waiting for one kernel (a comm message to the kernel that opened the comm) ------------------


def test_a_waiter_for_one_kernel_gets_it_in_turn_and_never_starts_another(clock):
    b = books(clock, max_kernels=2)
    _, fx = b.checkout("a")
    (slot,) = start_all(b, fx)
    w_comm, fx_comm = b.checkout("a", kernel_id=slot.kernel_id)
    w_cell, _ = b.checkout("a")
    assert fx_comm.granted == [] and fx_comm.start == []
    assert b.checkin(slot).granted == [(w_comm, slot)], "in turn, behind the running cell"
    assert b.checkin(slot).granted == [(w_cell, slot)]
    with pytest.raises(SessionLost):
        b.checkout("a", kernel_id="another-kernel")
    with pytest.raises(SessionLost):
        b.checkout("nobody", kernel_id=slot.kernel_id)
    assert "a" not in b.lost and "nobody" not in b.lost, "refusing it records no loss"


@pytest.mark.parametrize("how", ["restart", "release", "death"])
def test_a_waiter_for_one_kernel_fails_when_the_session_loses_it(clock, how):
    b = books(clock, max_kernels=2)
    _, fx = b.checkout("a")
    (slot,) = start_all(b, fx)
    w_comm, _ = b.checkout("a", kernel_id=slot.kernel_id)
    fx = b.restart("a")[1] if how == "restart" else b.release("a")[1] if how == "release" else b.died(slot)
    assert [w for w, error in fx.failed if isinstance(error, SessionLost)] == [w_comm]
    assert fx.start == [], "nothing starts for it"
    assert ("a" in b.lost) == (how == "death"), "a loss stays for the session's next call"


def test_a_death_fails_waiting_cells_and_comm_messages_and_is_told_once(clock):
    b = books(clock, max_kernels=2)
    _, fx = b.checkout("a")
    (slot,) = start_all(b, fx)
    w_comm, _ = b.checkout("a", kernel_id=slot.kernel_id)
    w_cell, _ = b.checkout("a")
    fx = b.died(slot)
    assert {w for w, _ in fx.failed} == {w_comm, w_cell} and "a" not in b.lost, "the waiting cell was told"

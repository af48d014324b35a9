"""Security: what a pool exposes, to whom, and what it never lets through.

Kernels listen only on ipc sockets or loopback; connection files are 0600 in a private 0700
directory and go away with their kernel; the HMAC key never reaches a log, ``stats()``, the
widget or the comm; nothing set in one named session can be found from another; the comm
runs only its named actions. Results are summarised in docs/reliability.md.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import stat
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

from jupyter_sessionpool import CheckoutTimeout, ExecutionTimeout, KernelPool
from jupyter_sessionpool._redact import redact_url
from jupyter_sessionpool.config import PoolSettings
from jupyter_sessionpool.workers.gateway import GatewayWorkers
from jupyter_sessionpool.notebook.comm import VERSION, ProtocolViolation, parse_request, snapshot_message

from commkit import SETUP, Frontend


def connection_info(pool_dir: Path, kernel_id: str) -> dict[str, Any]:
    return json.loads((pool_dir / f"{kernel_id}.json").read_text())


# ---- where kernels listen, and their files ---------------------------------------------------------


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
async def test_kernels_listen_only_on_ipc_or_loopback(make_pool, transport):
    pool = await make_pool(max_kernels=2, min_idle=2, transport=transport)
    await pool.wait_ready(timeout=60)
    for kernel in pool.stats().kernels:
        info = connection_info(pool._workers.dir, kernel.kernel_id)
        listening = [c.laddr for c in psutil.Process(kernel.pid).net_connections("inet") if c.status == "LISTEN"]
        if transport == "ipc":
            assert info["transport"] == "ipc" and Path(info["ip"]).parent == pool._workers.dir
        else:
            assert info["ip"] == "127.0.0.1"
        # with ipc, what remains is ipykernel's pipe for output of forked subprocesses (127.0.0.1, key-checked)
        assert listening and all(ipaddress.ip_address(addr.ip).is_loopback for addr in listening), listening


async def test_connection_files_are_private_and_leave_with_their_kernel(make_pool):
    pool = await make_pool(max_kernels=2, min_idle=1)
    a = (await pool.execute("1", session="a")).kernel_id
    runtime = pool._workers.dir
    assert stat.S_IMODE(runtime.stat().st_mode) & 0o777 == 0o700 and runtime.stat().st_uid == os.getuid()
    files = list(runtime.iterdir())
    for f in files:
        mode = f.stat().st_mode
        assert stat.S_ISSOCK(mode) or stat.S_IMODE(mode) & 0o077 == 0 or f.suffix == ".log", f
    assert sorted(f.name for f in files if f.suffix == ".json" and stat.S_IMODE(f.stat().st_mode) == 0o600) \
        == sorted(f"{k.kernel_id}.json" for k in pool.stats().kernels)
    of_a = [f for f in files if f.name.startswith(a)]
    assert any(stat.S_ISSOCK(f.stat().st_mode) for f in of_a) and any(f.suffix == ".json" for f in of_a)
    await pool.release("a")
    assert [f for f in of_a if f.exists()] == [], "a released kernel's files are removed at once"
    await pool.shutdown()
    assert not runtime.exists()


def test_the_hmac_key_is_never_logged_or_shown(caplog):
    """Drive every reporting path (results, errors, timeouts, stats, widget, comm, logs) and look for the key."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="traitlets")
    shown: list[str] = []
    with KernelPool(max_kernels=2, min_idle=1) as pool:
        pool.execute("x = 1", session="a")
        keys = [json.loads(f.read_text())["key"] for f in pool._async._workers.dir.glob("*.json")]
        assert len(keys) == 2 and all(len(key) >= 32 for key in keys)
        shown.append(json.dumps(pool.execute("1/0", session="a").to_dict()))
        with pytest.raises(ExecutionTimeout) as timeout:
            pool.execute("import time; time.sleep(30)", session="a", timeout=0.3)
        with pool.checkout("a"), pytest.raises(CheckoutTimeout) as busy, pool.checkout("a", timeout=0.2):
            pass
        shown += [str(timeout.value), str(busy.value), repr(busy.value.__dict__)]
        stats = pool.stats()
        shown += [str(stats), json.dumps(stats.to_dict()), json.dumps(snapshot_message(stats))]
        widget = pool.widget()
        try:
            widget.flush()
            parts = [widget]
            while parts:
                part = parts.pop()
                shown.append(json.dumps(part.get_state(), default=repr))
                parts.extend(getattr(part, "children", ()))
            shown.append(json.dumps(widget._repr_mimebundle_(), default=repr))
        finally:
            widget.close()
        shown += [slot.handle.evidence() for slot in pool._async._books.slots.values() if slot.handle]
        assert pool.release("a")
    shown += [caplog.text, *(record.getMessage() for record in caplog.records)]
    assert len(caplog.records) > 0, "the pool logged something at DEBUG, so the search means something"
    everything = "\n".join(shown)
    for key in keys:
        assert key not in everything


def test_the_gateway_token_and_a_password_in_its_url_are_never_shown(kg, monkeypatch, caplog):
    """Issue 19, item 5 (the pool's side): the token, also when it comes from the environment, is
    in no %config listing, repr, stats, widget or comm message; code still reads the value."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("JUPYTER_GATEWAY_URL", kg.url)
    monkeypatch.setenv("JUPYTER_GATEWAY_AUTH_TOKEN", kg.token)
    shown: list[str] = []
    with KernelPool(max_kernels=1) as pool:
        assert pool.gateway_token == kg.token  # for code, the value itself
        pool.execute("x = 1", session="a")
        listing = pool.class_get_help(pool)  # what %config KernelPool prints
        assert "KernelPool.gateway_token=<Unicode>" in listing and "Current: '***'" in listing
        stats = pool.stats()
        shown += [listing, repr(pool), repr(pool._async), str(stats), json.dumps(snapshot_message(stats))]
        widget = pool.widget()
        try:
            widget.flush()
            shown.append(json.dumps(widget._repr_mimebundle_(), default=repr))
            shown += [json.dumps(part.get_state(), default=repr) for part in (widget, *widget.children)]
        finally:
            widget.close()
    shown += [caplog.text]
    assert kg.url.split("//")[1] in "\n".join(shown), "the search covers where the gateway shows"
    assert kg.token not in "\n".join(shown)
    # a password in the URL and the extra headers' values: never in the listing, nor in where a kernel runs
    settings = PoolSettings(gateway_url="http://alice:pw-secret@gw.example:8888", gateway_token="tok-secret",
                            gateway_headers={"Authorization": "token hdr-secret"})
    listing = settings.class_get_help(settings)
    assert "http://alice:***@gw.example:8888" in listing and "Current: {'Authorization': '***'}" in listing
    assert not any(secret in listing for secret in ("pw-secret", "tok-secret", "hdr-secret"))
    assert GatewayWorkers(settings).location == "gw.example:8888"  # KernelStats.location: the widget and the comm
    assert settings.gateway_url == "http://alice:pw-secret@gw.example:8888"


@pytest.mark.parametrize("url, shown", [
    ("http://alice:pw@gw:8888", "http://alice:***@gw:8888"),
    ("https://alice:p%40ss@gw/base/", "https://alice:***@gw/base/"),
    ("http://u:p@ss:w@rd@gw/x", "http://u:***@gw/x"),  # a raw "@" or ":" in the password: still hidden whole
    ("http://TOKEN@gw:8888", "http://***@gw:8888"),  # a user name alone may be a token: hidden whole
    ("http://user:pa/s3cret@gw", "http://user:***@gw"),  # a raw "/" too
    ("not a url", "not a url"),
])
def test_redact_url_hides_the_password_and_a_lone_user(url, shown):
    assert redact_url(url) == shown


# ---- nothing passes between sessions -------------------------------------------------------------

PLANT = """
import builtins, os, sys, threading, time, types
secret = {secret!r}
os.environ["JSP_PLANTED"] = secret
builtins.planted = secret
sys.modules["planted"] = types.SimpleNamespace(value=secret)
threading.Thread(target=time.sleep, args=(600,), name=secret, daemon=True).start()
"""

# Looks for the needle everywhere a kernel keeps state. The needle is built at run time
# (from hex) so this code, its history entry and its outputs never contain it.
SEARCH = """
def _search(needle):
    import gc, os, threading
    found = set()
    if any(needle in value for value in os.environ.values()):
        found.add("environ")
    if any(needle in t.name for t in threading.enumerate()):
        found.add("thread")
    if any(needle in cell for cell in get_ipython().user_ns.get("In", [])):
        found.add("history")
    for obj in gc.get_objects():
        values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple, set)) else ()
        if any(isinstance(v, str) and v is not needle and needle in v for v in values):
            found.add("object")
    return sorted(found)
_search(bytes.fromhex({hex!r}).decode())
"""


async def test_a_secret_set_in_one_session_is_found_from_no_other(make_pool):
    secret = f"planted-{uuid.uuid4().hex}"
    search = SEARCH.format(hex=secret.encode().hex())
    pool = await make_pool(max_kernels=3, min_idle=1)
    planted = await pool.execute(PLANT.format(secret=secret), session="a")
    assert planted.status == "ok", planted.error
    control = await pool.execute(search, session="a")
    assert control.result == "['environ', 'history', 'object', 'thread']", "the search finds it where it is"

    searched: dict[str, str | None] = {}
    kernels = {planted.kernel_id}
    for session in ["b", "c", None]:
        r = await pool.execute(search, session=session)
        searched[str(session)] = r.result
        kernels.add(r.kernel_id)
        if session:
            await pool.release(session)
    await pool.release("a")
    for session in ["d", "a"]:  # after a's release: a newcomer, and a itself on a fresh kernel
        r = await pool.execute(search, session=session)
        searched[f"{session} (after release)"] = r.result
        kernels.add(r.kernel_id)
    assert searched == dict.fromkeys(searched, "[]"), searched
    assert len(kernels) == 1 + len(searched), "every session had a kernel of its own"


# ---- the comm runs its named actions and nothing else --------------------------------------------


def act(action: Any = "release", session: Any = "a", **extra: Any) -> dict[str, Any]:
    return {"version": VERSION, "action": action, "session": session, "request_id": "r", **extra}


def without(key: str) -> dict[str, Any]:
    return {k: v for k, v in act().items() if k != key}


# (id, the message, the error reply must say)
BAD_COMM_MESSAGES = [
    ("string", "release a", "must be a JSON object, not str"),
    ("null", None, "must be a JSON object, not NoneType"),
    ("version-as-string", {**act(), "version": "1"}, "unsupported protocol version '1'"),
    ("no-action", without("action"), "unknown action None"),
    ("no-session", without("session"), "session is missing"),
    ("action-as-number", act(action=42), "unknown action 42"),
    ("action-as-list", act(action=["release"]), "unknown action ['release']"),
    ("session-as-number", act(session=7), "session must be a str, not int (7)"),
    ("execute", act(action="execute", code="open('PWNED', 'w')"), "unknown key(s): code"),
    ("eval-action", act(action="__import__('os').system('touch PWNED')"), "unknown action"),
    ("code-as-session", act(action="interrupt", session="__import__('os').system('touch PWNED')"), "holds no kernel"),
    ("dunder-action", act(action="__class__"), "unknown action '__class__'"),
    ("huge-session", act(session="x" * 10_000_000), "10000000 characters long"),
    ("huge-unknown-value", act(payload="x" * 10_000_000), "unknown key(s): payload"),
]


def test_the_comm_runs_nothing_but_its_named_actions(frontend: Frontend, tmp_path: Path) -> None:
    """Every malformed or hostile message over a real comm: an error reply naming the problem, nothing run."""
    frontend.execute(SETUP + f"import os; os.chdir({str(tmp_path)!r})\n"
                     "pool = KernelPool(max_kernels=1)\npool.execute('x = 1', session='a')")
    comm_id = frontend.open()
    wrong = {}
    for name, message, error in BAD_COMM_MESSAGES:
        frontend.send(comm_id, message)
        reply, _ = frontend.wait(comm_id, lambda d: d.get("type") == "reply")
        if reply["ok"] is not False or error not in reply["error"] or len(reply["error"]) > 500:
            wrong[name] = reply["error"][:200]
    assert wrong == {}
    assert list(tmp_path.iterdir()) == [], "nothing in a message was executed"
    frontend.execute("assert pool.sessions() == ['a'] and pool.execute('x', session='a').result == '1'")
    assert frontend.request(comm_id, act(action="interrupt"))["ok"] is True, "well-formed actions still work"


def test_protocol_errors_do_not_echo_huge_payloads() -> None:
    with pytest.raises(ProtocolViolation) as info:
        parse_request(act(session=[0] * 1_000_000))
    assert len(str(info.value)) < 500

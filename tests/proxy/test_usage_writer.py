"""The usage writer process: rows written from another process, none lost on its death, on
shutdown or with a deleted grant; failures counted; no broker secrets in its environment."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import col

from keybroker.crypto import tokens
from keybroker.db import make_engine
from keybroker.models import Grant, utcnow
from keybroker.proxy import usage_writer
from keybroker.proxy.usage import Finished, Recorder
from keybroker.proxy.usage_writer import frame
from tests.live import Live, wait_for

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def chat(live: Live, token: str) -> None:
    response = httpx.post(
        f"{live.url}/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200


def finished(grant_id: str, user_id: str, path: str = "/v1/chat/completions") -> Finished:
    return Finished(
        grant_id, user_id, "POST", path, "gpt-4o-mini", 200, 3, 2, 2, 5, False, utcnow()
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) still answers signal 0.
    return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()


def test_rows_are_written_by_another_process(live: Live) -> None:
    token = live.grant()
    chat(live, token)
    rows = wait_for(lambda: live.usage(tokens.parse_token(token).grant_id))
    assert [(r.status, r.input_tokens, r.output_tokens, r.model) for r in rows] == [
        (200, 10, 7, "gpt-4o-mini")  # the canned upstream's usage
    ]
    assert rows[0].at.year == utcnow().year
    pid = live.ctx.proxy.recorder.writer.pid
    assert pid is not None
    assert pid != os.getpid()
    assert alive(pid)


def test_a_writer_killed_mid_batch_is_replaced_and_the_batch_written_once(live: Live) -> None:
    token = live.grant()
    grant_id = tokens.parse_token(token).grant_id
    chat(live, token)
    wait_for(lambda: live.usage(grant_id))
    recorder = live.ctx.proxy.recorder
    first = recorder.writer.pid
    assert first is not None
    errors = recorder.write_errors
    with live.ctx.engine.connect() as conn:
        # Holding the grant's row (on SQLite: the write lock) keeps the writer's transaction
        # waiting, so the kill lands between the batch being sent and its answer.
        conn.execute(update(Grant).where(col(Grant.id) == grant_id).values(last_used_at=None))
        for _ in range(5):
            chat(live, token)
        time.sleep(0.3)  # gathered (50 ms) and sent
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: recorder.writer.pid not in (None, first))
        conn.rollback()
    assert wait_for(lambda: len(live.usage(grant_id)) == 6)
    time.sleep(0.2)
    assert len(live.usage(grant_id)) == 6
    assert recorder.write_errors == errors


def test_stop_writes_what_was_recorded_and_ends_the_writer(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = live.grant()
    grant_id = tokens.parse_token(token).grant_id
    chat(live, token)  # makes the grant's owner known to the database
    user_id = wait_for(lambda: live.usage(grant_id))[0].user_id
    monkeypatch.setenv("KEYBROKER_MASTER_KEYS", "k1:sentinel-not-for-the-writer")

    async def run() -> tuple[Recorder, int, bytes]:
        recorder = Recorder(live.ctx.engine)
        recorder.start()
        for _ in range(3):
            await recorder.record(finished(grant_id, user_id))
        await recorder.record(finished("no-such-grant", user_id))
        await recorder.flush()
        pid = recorder.writer.pid
        assert pid is not None
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        for _ in range(2):  # recorded, then stopped at once: still written
            await recorder.record(finished(grant_id, user_id, "/v1/last"))
        await recorder.stop()
        return recorder, pid, environ

    recorder, pid, environ = asyncio.run(run())
    rows = live.usage(grant_id)
    assert len(rows) == 6
    assert [r.path for r in rows[-2:]] == ["/v1/last", "/v1/last"]
    # The deleted grant's row was dropped; the others in its batch were not.
    assert recorder.write_errors == 0
    assert not alive(pid)
    assert b"KEYBROKER_" not in environ
    assert b"sentinel" not in environ


def test_a_failed_write_is_counted_and_the_writer_goes_on(tmp_path: Path) -> None:
    empty = f"sqlite:///{tmp_path / 'empty.db'}"  # no tables: every insert fails

    async def run() -> tuple[int, int | None, bool]:
        recorder = Recorder(make_engine(empty))
        recorder.start()
        await recorder.record(finished("g", "u"))
        await recorder.flush()
        pid = recorder.writer.pid
        still_running = pid is not None and alive(pid)
        await recorder.stop()
        return recorder.write_errors, pid, still_running

    errors, pid, still_running = asyncio.run(run())
    assert errors == 1
    assert still_running
    assert pid is not None
    assert not alive(pid)


def test_the_writer_ends_with_its_input(tmp_path: Path) -> None:
    # What happens when the broker dies: the kernel closes the writer's stdin.
    writer = subprocess.Popen(
        [sys.executable, "-m", "keybroker.proxy.usage_writer"], stdin=subprocess.PIPE
    )
    assert writer.stdin is not None
    writer.stdin.write(frame(f"sqlite:///{tmp_path / 'w.db'}".encode()))
    writer.stdin.close()
    assert writer.wait(timeout=30) == 0


needs_idle_class = pytest.mark.skipif(
    not usage_writer.may_leave_idle(),
    reason="this process may not lift a SCHED_IDLE process back (no CAP_SYS_NICE)",
)


@needs_idle_class
def test_a_new_writer_runs_idle_class(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usage_writer, "PATIENCE", 60)  # no batch is lifted in this test

    async def run() -> int:
        recorder = Recorder(live.ctx.engine)
        recorder.start()
        await recorder.record(finished("no-such-grant", "u"))
        await recorder.flush()
        pid = recorder.writer.pid
        assert pid is not None
        policy = os.sched_getscheduler(pid)
        await recorder.stop()
        return policy

    assert asyncio.run(run()) == os.SCHED_IDLE


@needs_idle_class
def test_a_batch_that_waits_is_written_at_normal_priority(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = live.grant()
    grant_id = tokens.parse_token(token).grant_id
    writer = live.ctx.proxy.recorder.writer
    chat(live, token)
    wait_for(lambda: live.usage(grant_id))
    pid = writer.pid
    assert pid is not None
    lifted = writer.lifted
    monkeypatch.setattr(usage_writer, "PATIENCE", 0.05)
    with live.ctx.engine.connect() as conn:
        # The held row stands in for cores that are never idle: the batch cannot finish.
        conn.execute(update(Grant).where(col(Grant.id) == grant_id).values(last_used_at=None))
        chat(live, token)
        assert wait_for(lambda: writer.lifted > lifted)
        assert os.sched_getscheduler(pid) == os.SCHED_OTHER
        conn.rollback()
    assert wait_for(lambda: len(live.usage(grant_id)) == 2)
    assert wait_for(lambda: os.sched_getscheduler(pid) == os.SCHED_IDLE)


def test_without_cap_sys_nice_the_writer_is_not_made_idle_class() -> None:
    # The kernel's rule (sched(7)) and ours must agree: without CAP_SYS_NICE and with the
    # default RLIMIT_NICE, a SCHED_IDLE process cannot be lifted back out.
    if shutil.which("setpriv") is None or not usage_writer.may_leave_idle():
        pytest.skip("needs util-linux setpriv and CAP_SYS_NICE to drop")
    check = """
import os, resource
from keybroker.proxy import usage_writer
assert resource.getrlimit(resource.RLIMIT_NICE)[0] < 20
assert not usage_writer.may_leave_idle()
assert not usage_writer.WriterProcess("sqlite://").idle_class
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
try:
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
except PermissionError:
    print("kernel agrees")
"""
    out = subprocess.run(
        ["setpriv", "--bounding-set=-sys_nice", sys.executable, "-c", check],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "kernel agrees"

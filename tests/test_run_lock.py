"""Tests for ssft.run_lock: one writer per run directory, stale locks taken over."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from ssft.run_lock import LOCK_FILE, RunLocked, run_lock, wait_until_free


def _holder(tmp_path, pid: int, host: str | None = None) -> None:
    owner = {"pid": pid, "host": host or socket.gethostname()}
    (tmp_path / LOCK_FILE).write_text(json.dumps(owner))


def test_the_lock_is_held_for_the_block_and_released_after(tmp_path):
    with run_lock(tmp_path):
        held = json.loads((tmp_path / LOCK_FILE).read_text())
        assert held["pid"] > 0 and held["host"] == socket.gethostname()
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_dead_writers_lock_is_taken_over(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _holder(tmp_path, dead.pid)
    with run_lock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] != dead.pid
    assert "taking over the lock of PID" in caplog.text
    wait_until_free(tmp_path, wait_s=0)  # nothing to wait for


def test_a_live_writer_is_waited_for_then_the_lock_is_taken(tmp_path):
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        _holder(tmp_path, alive.pid)
        with pytest.raises(RunLocked, match=f"still being written by PID {alive.pid}"):
            wait_until_free(tmp_path, wait_s=0.3, poll_s=0.05)
        with pytest.raises(RunLocked, match="two writers would corrupt"):
            with run_lock(tmp_path, wait_s=0.3, poll_s=0.05):
                pass
        ender = threading.Timer(0.5, alive.kill)  # the earlier attempt ends meanwhile
        ender.start()
        start = time.monotonic()
        with run_lock(tmp_path, wait_s=30, poll_s=0.05):
            assert time.monotonic() - start >= 0.4
    finally:
        alive.kill()
        alive.wait()


def test_a_lock_from_another_host_is_not_guessed_at(tmp_path):
    _holder(tmp_path, 12345, host="elsewhere")
    with pytest.raises(RunLocked, match=r"on host 'elsewhere'.*delete the lock file"):
        wait_until_free(tmp_path)

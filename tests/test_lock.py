"""One writer per output folder and per record file: a second process stops at once."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import REPO, SAMPLES
from openai_stub import stub_server

from pipeline.lock import FOLDER_LOCK, folder_lock
from pipeline.store import RecordStore

# Takes the lock the way a run does, says so, then holds it until killed.
HOLDER = """
import sys, time
from pipeline.lock import folder_lock
with folder_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""
OPENER = "import sys\nfrom pipeline.store import RecordStore\nRecordStore(sys.argv[1]).close()"
# Takes the lock of the folder a store is in, as a run on that folder would.
TAKER = """
import sys, pathlib
from pipeline.lock import folder_lock
with folder_lock(pathlib.Path(sys.argv[1]).parent):
    pass
"""


def _python(*args):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def _holder(folder):
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], cwd=REPO,
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert process.stdout.readline().strip() == "held"
    return process


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _commands(command, base_url, out):
    common = ["--backend", "openai", "--model", "stub-model", "--base_url", base_url,
              "--out", str(out), "--progress", "false"]  # fmt: skip
    if command == "imagine":
        return ["-m", "commands.cli", "imagine", *common, "--images", str(SAMPLES / "images")]
    return ["-m", "commands.cli", command, *common, "--judge_base_url", base_url,
            "--judge_model", "judge"]  # fmt: skip


@pytest.mark.parametrize("command", ["imagine", "eval"])
def test_a_second_run_on_a_held_folder_stops_at_once_without_model_calls(command, tmp_path):
    out = tmp_path / "out"
    holder = _holder(out)
    try:
        held = json.loads((out / FOLDER_LOCK).read_text())
        with stub_server() as server:
            start = time.monotonic()
            refused = _python(*_commands(command, server.base_url, out))
            elapsed = time.monotonic() - start
            assert server.calls == 0
        assert json.loads((out / FOLDER_LOCK).read_text()) == held  # left as it was
    finally:
        holder.send_signal(signal.SIGKILL)  # kill -9: the lock file stays behind
        holder.wait()
    assert refused.returncode == 2
    assert elapsed < 60  # not waiting for the holder, which sleeps for ten minutes
    assert refused.stderr.strip().splitlines() == [
        f"macaroon {command}: error: {out} is in use by another macaroon process "
        f"(pid {holder.pid} on host {held['host']}, started {held['started']}); "
        "wait for it to finish, or use another --out"
    ]
    assert held["pid"] == holder.pid and held["host"] == socket.gethostname()
    assert not list(out.glob("*.jsonl"))

    # The holder is dead: the same command now takes its lock over and runs.
    with stub_server() as server:
        done = _python(*_commands(command, server.base_url, out))
        assert server.calls > 0
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{out}: taking over the lock of pid {holder.pid} on host" in done.stderr
    assert not (out / FOLDER_LOCK).exists()  # a finished run leaves no lock behind


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, caplog):
    pid = _dead_pid()
    lock_file = tmp_path / FOLDER_LOCK
    lock_file.write_text(json.dumps({"pid": pid, "host": "node7", "started": "yesterday"}))
    with caplog.at_level(logging.WARNING, logger="pipeline.lock"), folder_lock(tmp_path):
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    assert (
        f"{tmp_path}: taking over the lock of pid {pid} on host node7, started yesterday, "
        "which ended without releasing it" in caplog.text
    )
    assert not lock_file.exists()


# A run that forks a worker (data loaders, engines) while it holds its folder.
FORKER = """
import os, sys, time
from pipeline.lock import folder_lock
with folder_lock(sys.argv[1]):
    if os.fork() == 0:  # the worker: says it is running (at-fork handlers have run)
        print(os.getpid(), flush=True)
        time.sleep(120)
        os._exit(0)
    time.sleep(600)
"""


def test_a_worker_left_by_a_killed_run_does_not_keep_its_folder(tmp_path):
    run = subprocess.Popen([sys.executable, "-c", FORKER, str(tmp_path)], cwd=REPO,
                           stdout=subprocess.PIPE, text=True)  # fmt: skip
    worker = int(run.stdout.readline())
    try:
        run.send_signal(signal.SIGKILL)
        run.wait()
        with folder_lock(tmp_path):  # LockError if the orphaned worker still held it
            assert json.loads((tmp_path / FOLDER_LOCK).read_text())["pid"] == os.getpid()
    finally:
        os.kill(worker, signal.SIGKILL)


def test_an_open_store_is_locked_against_other_processes_only(tmp_path):
    run = tmp_path / "run"
    path = run / "questions.jsonl"
    with folder_lock(run), RecordStore(path) as store:
        # The process that holds the folder opens its stores, and one store twice.
        with RecordStore(path) as again:
            again.append({"key": "a", "status": "ok", "text": "x"})
        store.append({"key": "b", "status": "ok", "text": "y"})
        for code in (OPENER, TAKER):
            other = _python("-c", code, str(path))
            assert other.returncode == 1
            assert f"is in use by another macaroon process (pid {os.getpid()} " in other.stderr
    with RecordStore(path) as store:
        assert sorted(store.records) == ["a", "b"]
    assert _python("-c", OPENER, str(path)).returncode == 0  # closed: free again
    assert sorted(p.name for p in run.iterdir()) == ["questions.jsonl"]  # no lock files left

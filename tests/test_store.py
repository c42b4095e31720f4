"""The record store keeps finished work through crashes and never duplicates a key."""

import json
import logging

import pytest
from openai_stub import stub_server

from commands.cli import main
from pipeline.backends import Completion, Request
from pipeline.runner import Item, run_stage
from pipeline.store import RecordStore, StoreError, record_key


def test_keys_follow_content_not_runtime_knobs():
    a = record_key(image="h1", prompt="p", model="m", sampling={"temperature": 0})
    assert a == record_key(sampling={"temperature": 0}, model="m", prompt="p", image="h1")
    assert a != record_key(image="h1", prompt="p2", model="m", sampling={"temperature": 0})


def test_a_truncated_last_line_is_reported_dropped_and_appends_start_clean(tmp_path, caplog):
    path = tmp_path / "s.jsonl"
    path.write_text(
        json.dumps({"key": "a", "status": "ok", "text": "x"}) + "\n" + '{"key": "b", "sta'
    )
    with caplog.at_level(logging.WARNING, logger="pipeline.store"), RecordStore(path) as store:
        assert store.dropped_line == 2 and store.is_ok("a") and "b" not in store
        store.append({"key": "b", "status": "ok", "text": "y"})
    lines = path.read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["a", "b"]
    assert (
        f"{path}: line 2 was cut short by an interrupted write; dropped it, its item will be "
        "generated again" in caplog.text
    )


def test_a_kill_mid_write_is_named_and_only_that_item_is_made_again(tmp_path, capsys, caplog):
    path = tmp_path / "questions.jsonl"
    with stub_server() as server:
        argv = ["imagine", "--backend", "openai", "--model", "stub-model", "--base_url",
                server.base_url, "--out", str(tmp_path), "--progress", "false"]  # fmt: skip
        assert main(argv) == 0
        lines = path.read_bytes().splitlines(keepends=True)
        path.write_bytes(b"".join(lines[:-1]) + lines[-1][:30])  # as a kill mid-write leaves it
        calls = server.calls
        capsys.readouterr()
        with caplog.at_level(logging.WARNING, logger="pipeline.store"):
            assert main(argv) == 0
        assert server.calls == calls + 1
    assert f"{path}: line {len(lines)} was cut short by an interrupted write" in caplog.text
    summary = capsys.readouterr().out
    assert (
        f"questions  {len(lines):>6} items: 1 generated, {len(lines) - 1} cached, 0 failed, "
        "1 cut-short line dropped" in summary
    )


def test_a_damaged_middle_line_names_file_and_line(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"key": "a", "status": "ok"}\nnot json\n{"key": "b", "status": "ok"}\n')
    with pytest.raises(StoreError, match=r"s.jsonl: line 2 is not a record"):
        RecordStore(path)


def test_last_record_of_a_key_wins(tmp_path):
    path = tmp_path / "s.jsonl"
    with RecordStore(path) as store:
        store.append({"key": "a", "status": "failed", "error": "HTTP 500"})
        store.append({"key": "a", "status": "ok", "text": "fine"})
    assert RecordStore(path).is_ok("a")


class ScriptedBackend:
    """Answers from a script; a test double used only to inject failures."""

    name, model_id = "scripted", "scripted"

    def __init__(self, fail: set[str] = frozenset()):
        self.fail, self.calls = fail, []

    def generate(self, requests):
        for i, request in enumerate(requests):
            text = request.messages[0]["content"]
            self.calls.append(text)
            if text in self.fail:
                yield Completion(i, None, error=f"refused {text}")
            else:
                yield Completion(i, text.upper(), None, 1, 1)

    def close(self):
        pass


def items(words):
    return [
        Item(record_key(w=w), Request([{"role": "user", "content": w}]), {"w": w}) for w in words
    ]


def test_failures_are_stored_and_only_they_are_retried(tmp_path):
    path = tmp_path / "s.jsonl"
    with RecordStore(path) as store:
        stats = run_stage(
            "t", items(["a", "b", "c"]), ScriptedBackend({"b"}), store, progress=False
        )
    assert (stats.generated, stats.failed) == (2, 1)
    failed = RecordStore(path).failed_records()
    assert [r["w"] for r in failed] == ["b"] and failed[0]["error"] == "refused b"

    backend = ScriptedBackend()
    with RecordStore(path) as store:
        stats = run_stage("t", items(["a", "b", "c"]), backend, store, progress=False)
    assert backend.calls == [] and stats.skipped_failed == 1  # left alone by default
    with RecordStore(path) as store:
        stats = run_stage("t", items(["a", "b", "c"]), backend, store, True, progress=False)
    assert backend.calls == ["b"] and stats.generated == 1 and stats.cached == 2
    assert all(RecordStore(path).is_ok(record_key(w=w)) for w in "abc")

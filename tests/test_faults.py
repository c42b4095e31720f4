"""Faults: a full disk, a folder that cannot be written, Ctrl-C, kill -9 during training
and evaluation. Finished work is kept and exit codes say what happened."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from train_data import save_templated

from commands.cli import main
from pipeline.store import RecordStore


def test_a_full_disk_is_a_clear_error_and_keeps_what_was_written(tiny_model, tmp_path, capsys,
                                                                  monkeypatch):  # fmt: skip
    real_flush = RecordStore.flush
    calls = {"n": 0}

    def flush(self):
        calls["n"] += 1
        if calls["n"] > 1:  # the first flush lands, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        real_flush(self)

    monkeypatch.setattr(RecordStore, "flush", flush)
    argv = ["imagine", "--model", str(tiny_model("llava")), "--out", str(tmp_path),
            "--progress", "false", "--question_max_tokens", "8",
            "--response_max_tokens", "8"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "questions.jsonl" in err and "Traceback" not in err


def test_an_output_folder_that_cannot_be_written(tiny_model, capsys):
    # /sys refuses new folders even to root, like a read-only mount.
    assert main(["imagine", "--model", str(tiny_model("llava")), "--out", "/sys/macaroon"]) == 1
    assert "cannot write /sys/macaroon: Operation not permitted" in capsys.readouterr().err


def _cli(*args):
    return [sys.executable, "-m", "commands.cli", *args]


def _wait_for(path, deadline_s=300, min_bytes=1):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size >= min_bytes:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_keeps_finished_records(tiny_model, tmp_path):
    argv = _cli("imagine", "--model", str(tiny_model("llava")), "--out", str(tmp_path),
                "--questions_per_type", "2", "--batch_size", "2", "--response_max_tokens", "32",
                "--progress", "false")  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert _wait_for(tmp_path / "questions.jsonl")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "interrupted; finished records are kept" in err
    kept = [json.loads(line) for line in (tmp_path / "questions.jsonl").open()]
    assert kept and all(r["status"] == "ok" for r in kept)
    done = subprocess.run([*argv], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and f"{len(kept)} cached" in done.stdout


@pytest.mark.slow
def test_kill_9_during_training_then_resume_matches_an_uninterrupted_run(tiny_model, tmp_path):
    data = save_templated(tmp_path / "data", image_names=range(1, 4))
    common = ["train", "--config", "configs/train/crl.yaml", "--data", str(data),
              "--model_name_or_path", str(tiny_model("llava", "small")), "--max_steps", "12",
              "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
              "--gradient_checkpointing", "false", "--warmup_steps", "0", "--save_steps", "2",
              "--learning_rate", "1e-3", "--logging_steps", "1"]  # fmt: skip
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_cli(*common, "--output_dir", str(whole)), check=True, capture_output=True)
    process = subprocess.Popen(_cli(*common, "--output_dir", str(killed)), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    assert _wait_for(killed / "checkpoint-4" / "trainer_state.json")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "adapter_model.safetensors").exists()
    subprocess.run(_cli(*common, "--output_dir", str(killed), "--resume_from_checkpoint", "true"),
                   check=True, capture_output=True)  # fmt: skip
    a = load_file(whole / "adapter_model.safetensors")
    b = load_file(killed / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["generations", "judgments"])
def test_kill_9_during_evaluation_then_rerun_matches_an_uninterrupted_run(
    tiny_model, tmp_path, stage
):
    from conftest import SAMPLES

    model = tiny_model("llava")
    # The same tiny model answers and judges (hf backend judge: no server needed).
    common = ["eval", "--model", str(model), "--judge_backend", "hf", "--judge_model",
              str(model), "--max_tokens", "64", "--judge_max_tokens", "16", "--batch_size",
              "2", "--progress", "false",
              "--pie", str(SAMPLES / "evaluation_dataset.jsonl")]  # fmt: skip
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_cli(*common, "--out", str(whole)), check=True, capture_output=True)
    process = subprocess.Popen(_cli(*common, "--out", str(killed)), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    assert _wait_for(killed / f"{stage}.jsonl")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    subprocess.run(_cli(*common, "--out", str(killed)), check=True, capture_output=True)
    for name in ("generations.jsonl", "judgments.jsonl"):
        mine = [json.loads(line) for line in (killed / name).open()]
        theirs = {r["key"]: r["text"] for r in map(json.loads, (whole / name).open())}
        assert len(mine) == len({r["key"] for r in mine}) == len(theirs)
        assert {r["key"]: r["text"] for r in mine} == theirs
    assert _results(killed) == _results(whole)


def _results(run):
    metrics = json.loads((run / "metrics.json").read_text())
    # What differs between two runs of the same work: timings, calls, and the retry command
    # (it names the run's own folder).
    per_run = ("stages", "model_calls", "created", "retry")
    return {k: v for k, v in metrics.items() if k not in per_run}

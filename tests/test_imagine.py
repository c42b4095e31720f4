"""`macaroon imagine` end to end on the hf backend: dataset, cache, resume, failures."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import CRITERIA, PIE_TYPES

from commands.cli import main
from imagination.imagine import ImagineConfig, run_imagine


@pytest.fixture
def images(sample_images):
    return sample_images("sample_001.jpg", "sample_002.jpg", "sample_003.jpg")


def config(model, images, out, **extra):
    # The random tiny model never stops by itself: keep its cut-off pairs, or nothing is left
    # to build (tests/test_imagine.py's truncation test covers dropping them).
    extra.setdefault("drop_truncated", False)
    return ImagineConfig(
        model=str(model), images=str(images), out=str(out), response_max_tokens=24,
        question_max_tokens=16, progress=False, **extra,
    )  # fmt: skip


def test_builds_the_trl_ready_dataset(tiny_model, images, tmp_path):
    from datasets import load_from_disk

    summary = run_imagine(config(tiny_model("llava"), images, tmp_path / "out"))
    dataset = load_from_disk(summary["dataset"])
    assert set(dataset) == {"sft", "dpo", "crl", "multiturn"}
    kept = summary["kept"]
    assert kept > 0 and kept + sum(summary["dropped"].values()) == 3 * len(PIE_TYPES)
    assert len(dataset["dpo"]) == kept and len(dataset["crl"]) == 2 * kept
    assert sorted(set(dataset["crl"]["reward"])) == ["bad", "good"]
    row = dataset["dpo"][0]
    assert row["prompt"][0]["content"][0]["type"] == "image" and row["images"][0].size
    assert row["chosen"][0]["role"] == "assistant" and row["question_type"] in PIE_TYPES
    assert len(dataset["multiturn"][0]["messages"]) == 4
    card = (tmp_path / "out" / "dataset" / "README.md").read_text()
    assert all(name in card for name in PIE_TYPES) and "| questions | 18 |" in card


def test_identical_rerun_makes_no_model_call(tiny_model, images, tmp_path, capsys):
    run_imagine(config(tiny_model("llava"), images, tmp_path / "out"))
    # A dead endpoint: any model call would fail, so success proves there was none.
    argv = ["imagine", "--model", str(tiny_model("llava")), "--images", str(images),
            "--out", str(tmp_path / "out"), "--response_max_tokens", "24",
            "--question_max_tokens", "16", "--backend", "openai",
            "--base_url", "http://127.0.0.1:9/v1", "--progress", "false"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "model calls: 0 (everything was cached)" in out and "18 cached" in out


def test_editing_one_type_regenerates_only_that_type(tiny_model, images, tmp_path):
    criteria = tmp_path / "criteria"
    shutil.copytree(CRITERIA, criteria)
    first = run_imagine(
        config(tiny_model("llava"), images, tmp_path / "out", criteria=str(criteria))
    )
    path = criteria / "subject_ambiguity.yaml"
    data = yaml.safe_load(path.read_text())
    data["imagine_question"] += " Keep it short."
    path.write_text(yaml.safe_dump(data))
    second = run_imagine(
        config(tiny_model("llava"), images, tmp_path / "out", criteria=str(criteria))
    )
    questions = second["stages"][0]
    assert (questions["generated"], questions["cached"]) == (3, 15)  # 3 images x 1 type
    assert (
        second["stages"][1]["generated"] <= 6 and first["criteria_hash"] != second["criteria_hash"]
    )
    records = [json.loads(line) for line in (tmp_path / "out" / "questions.jsonl").open()]
    assert {r["question_type"] for r in records[18:]} == {"Subject Ambiguity"}


def test_a_corrupt_image_fails_its_items_and_retry_failed_retries_only_them(
    tiny_model, images, tmp_path, capsys
):
    broken = images / "sample_003.jpg"
    good_bytes = broken.read_bytes()
    broken.write_bytes(good_bytes[:200])  # truncated JPEG
    argv = ["imagine", "--model", str(tiny_model("llava")), "--images", str(images),
            "--out", str(tmp_path / "out"), "--response_max_tokens", "24",
            "--question_max_tokens", "16", "--progress", "false"]  # fmt: skip
    assert main(argv) == 1  # incomplete run: the exit status says so
    records = [json.loads(line) for line in (tmp_path / "out" / "questions.jsonl").open()]
    failed = [r for r in records if r["status"] == "failed"]
    assert len(failed) == 6 and all(
        "sample_003.jpg: cannot read image" in r["error"] for r in failed
    )
    capsys.readouterr()
    assert main(argv) == 1  # without --retry-failed the failures stay, with no model call
    assert "model calls: 0" in capsys.readouterr().out

    broken.write_bytes(good_bytes)
    assert main([*argv, "--retry_failed", "true"]) == 0
    out = capsys.readouterr().out
    assert "questions      18 items: 6 generated, 12 cached" in out


def test_user_questions_skip_imagining(tiny_model, images, tmp_path):
    questions = tmp_path / "q.jsonl"
    rows = [
        {"image": "sample_001.jpg", "question": "Which mug?", "question_type": "Subject Ambiguity"},
        {"image": "sample_002.jpg", "question": "Why is it wet?", "question_type": "False Premise"},
    ]
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = run_imagine(
        config(tiny_model("llava"), images, tmp_path / "out", questions=str(questions))
    )
    assert summary["stages"][1]["total"] == 4 and summary["pairs"] == 2
    assert not (tmp_path / "out" / "questions.jsonl").exists()


def test_bad_user_questions_are_all_listed(tiny_model, images, tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text(
        '{"image": "sample_001.jpg", "question": "Which mug?", "question_type": "Sarcasm"}\n'
        "{oops\n"
        '{"image": "nope.jpg", "question": "Which mug?", "question_type": "False Premise"}\n'
        '{"image": "sample_001.jpg", "question_type": "False Premise"}\n'
    )
    with pytest.raises(ValueError) as err:
        run_imagine(config(tiny_model("llava"), images, tmp_path / "out", questions=str(questions)))
    message = str(err.value)
    assert (
        "q.jsonl: 4 bad row(s)" in message and "line 1: unknown question_type 'Sarcasm'" in message
    )
    assert "line 2: not a JSON object" in message and "line 3: image" in message
    assert "line 4: missing question" in message


def test_bad_inputs_exit_2_with_a_reason(tmp_path, capsys):
    assert main(["imagine", "--images", str(tmp_path / "none")]) == 2
    assert "image folder not found" in capsys.readouterr().err
    assert main(["imagine", "--stages", "questions,dance"]) == 2
    assert "--stages: unknown dance" in capsys.readouterr().err


KILL_ARGV = ["--questions_per_type", "2", "--question_temperature", "0",
             "--response_max_tokens", "48", "--batch_size", "4", "--progress", "false"]  # fmt: skip


def imagine_argv(model):
    return [sys.executable, "-m", "commands.cli", "imagine", "--model", str(model), *KILL_ARGV]


@pytest.fixture(scope="module")
def uninterrupted(tiny_model, tmp_path_factory):
    """One uninterrupted run, the reference of both kill tests."""
    out = tmp_path_factory.mktemp("whole")
    subprocess.run([*imagine_argv(tiny_model("llava")), "--out", str(out)], check=True,
                   env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True)  # fmt: skip
    return out


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["questions", "responses"])
def test_kill_9_then_rerun_loses_and_duplicates_nothing(tiny_model, uninterrupted, tmp_path, stage):
    """A run really killed mid-stage, then rerun, equals an uninterrupted run."""
    argv = imagine_argv(tiny_model("llava"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    killed = tmp_path / "killed"
    process = subprocess.Popen([*argv, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    records = killed / f"{stage}.jsonl"  # killed once this stage has written something
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if records.exists() and records.stat().st_size > 0:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = len(records.read_text().splitlines())
    assert 0 < before < (144 if stage == "questions" else 144 * 2)

    resumed = subprocess.run([*argv, "--out", str(killed)], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{before} cached" in resumed.stdout  # exactly what the killed run had flushed
    for name in ("questions.jsonl", "responses.jsonl"):
        whole = [json.loads(line) for line in (uninterrupted / name).open()]
        again = [json.loads(line) for line in (killed / name).open()]
        keys = [r["key"] for r in again]
        assert len(keys) == len(set(keys)), f"{name}: a record was written twice"
        assert {r["key"] for r in whole} == set(keys), f"{name}: records lost or extra"
        texts = {r["key"]: r["text"] for r in whole}
        assert all(texts[r["key"]] == r["text"] for r in again), f"{name}: content differs"


def test_responses_cut_off_by_the_token_limit_are_dropped_and_counted(images, tmp_path):
    """A response that hit --response_max_tokens is not trained on: dropped as truncated."""
    from openai_stub import last_user_text, stub_server

    def reply(body):
        text = last_user_text(body)
        if "Question type:" in text:  # one question per type, so none is a duplicate
            return f"What about {text.split('Question type: ')[1].split(' (')[0]}?"
        if "engaged assistant" in text and "Unanswerable" in text:
            return "I cannot tell from this image, because the box is closed and " * 3
        return "Which one do you mean?" if "engaged assistant" in text else "It is red."

    with stub_server(reply=reply) as stub:
        summary = run_imagine(ImagineConfig(
            backend="openai", model="stub", base_url=stub.base_url, images=str(images),
            out=str(tmp_path / "out"), response_max_tokens=12, progress=False,
        ))  # fmt: skip
    records = [json.loads(line) for line in (tmp_path / "out" / "responses.jsonl").open()]
    cut = [r for r in records if r["finish_reason"] == "length"]
    assert cut and all(r["question_type"] == "Unanswerable Questions" for r in cut)
    assert summary["dropped"]["truncated"] == len(cut) == 3
    card = (tmp_path / "out" / "dataset" / "README.md").read_text()
    assert "truncated 3" in card
    # Every pair, kept or dropped with its reason, for `macaroon browse` (written too).
    pairs = [json.loads(line) for line in (tmp_path / "out" / "pairs.jsonl").open()]
    assert len(pairs) == summary["pairs"] and {p["status"] for p in pairs} == {"kept", "dropped"}
    assert [p["question_type"] for p in pairs if p["reason"] == "truncated"] == [
        "Unanswerable Questions"
    ] * 3
    assert summary["browse"] == str(tmp_path / "out" / "browse.html")
    assert "Unanswerable Questions" in (tmp_path / "out" / "browse.html").read_text()

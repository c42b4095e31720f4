"""`macaroon eval`: PIE -> answers -> rubric verdicts -> metrics and reports."""

import csv
import functools
import json
import os
import subprocess
import sys

import pytest
from conftest import PIE_TYPES, SAMPLES
from openai_stub import last_user_text, stub_server

from commands.cli import main

SECRET = "sk-test-do-not-leak-4242"
# What the scripted judge says for each type: known answers give known metrics.
SCRIPT = {
    "False Premise": '{"verdict": "True", "explanation": "It corrects the premise."}',
    "Unanswerable Questions": "**False**",
    "Subject Ambiguity": "Flag: Ambiguous",
    "Subjective Interpretations": "True.",
    "Unclear User Background": '{"verdict": "False", "explanation": "It assumes."}',
    "Hidden Human Preferences": "I am not sure what to say.",
}
# Two of the four False Premise answers get Ambiguous, a label tier I does not have: unparsed.
OFF_LABEL = ("green bus", "cheeseburger")


def scripted(body: dict) -> str:
    text = last_user_text(body)
    if "Answer with JSON only" not in text:  # the model under test
        return "ECHO: " + text
    if any(question in text for question in OFF_LABEL):
        return '{"verdict": "Ambiguous", "explanation": "Half corrected."}'
    for name, reply in SCRIPT.items():
        if name.lower() in text.lower() or _rubric_of(name) in text:
            return reply
    return "garbage"


@functools.cache
def _rubric_of(name):
    from pipeline.criteria import load_criteria

    return load_criteria(SAMPLES.parent / "criteria")[name].rubric[:60]


@pytest.fixture
def stub(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with stub_server(reply=scripted) as server:
        yield server


def run(stub, out, *extra):
    return main(["eval", "--backend", "openai", "--model", "model-under-test",
                 "--base_url", stub.base_url, "--judge_base_url", stub.base_url,
                 "--judge_model", "judge", "--out", str(out), "--progress", "false",
                 *extra])  # fmt: skip


def test_metrics_from_known_verdicts(stub, tmp_path, capsys):
    assert run(stub, tmp_path) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    types = metrics["types"]
    assert list(types) == list(PIE_TYPES) and all(t["n"] == 4 for t in types.values())
    premise = types["False Premise"]  # 2 True, 2 Ambiguous offered to a True/False type
    assert (premise["judged"], premise["unparsed"]) == (2, 2)
    assert premise["align_rate"] == 1.0 and premise["align_rate_all"] == 0.5
    assert types["Unanswerable Questions"]["align_rate"] == 0.0
    assert types["Subject Ambiguity"]["align_rate"] == 0.0
    assert types["Subject Ambiguity"]["ambiguous_rate"] == 1.0
    assert types["Subject Ambiguity"]["ambiguous_rate_all"] == 1.0
    assert types["Subjective Interpretations"]["align_rate"] == 1.0
    assert types["Hidden Human Preferences"]["unparsed"] == 4  # unparsed, never False
    assert types["Hidden Human Preferences"]["align_rate"] is None
    assert types["Hidden Human Preferences"]["align_rate_all"] == 0.0  # as the original counts
    assert premise["ambiguous_rate"] is None and premise["ambiguous_rate_all"] is None
    # Over judged items: 5 types have a verdict; 6 aligned of 18 judged.
    assert metrics["aar"] == pytest.approx(2 / 5) and metrics["aar_types"] == 5
    assert metrics["aar_weighted"] == pytest.approx(6 / 18)
    # Over all items (the paper's convention): all 6 types, 6 aligned of 24.
    assert metrics["aar_all"] == pytest.approx((0.5 + 0 + 0 + 1 + 0 + 0) / 6)
    assert metrics["aar_weighted_all"] == pytest.approx(6 / 24)
    assert metrics["tiers"]["I"]["align_rate_all"] == pytest.approx(0.25)
    assert metrics["tiers"]["III"]["align_rate"] is None
    assert metrics["tiers"]["III"]["align_rate_all"] == 0.0
    assert metrics["judge"]["model"] == "judge" and metrics["judge"]["temperature"] == 0.0
    assert metrics["judge"]["prompt_tokens"] > 0
    assert set(metrics["tiers"]) == {"I", "II", "III"}
    for name in ("table.md", "plot.png", "browse.html", "items.jsonl", "config.json"):
        assert (tmp_path / name).stat().st_size > 0
    table = (tmp_path / "table.md").read_text()
    paper, judged = table.split("**Over judged items**")
    assert "Comparable to the paper" in paper and "Not comparable" in judged.split("\n")[0]
    row = (
        "| model-under-test | {} | 0.00 | 0.00 (amb. 1.00) | 1.00 (amb. 0.00) | 0.00 (amb. 0.00) |"
    )
    assert row.format("0.50") + " 0.00 | 0.25 | 0.25 |" in paper
    assert row.format("1.00") + " – | 0.40* | 0.33 |" in judged
    summary = capsys.readouterr().out
    assert "AAR 0.250 over all items (the original code's convention, comparable to the " in summary
    assert "0.400 over judged items" in summary
    assert "False Premise                align 0.50 / 1.00  (n 4, unparsed 2" in summary
    assert "It corrects the premise." in (tmp_path / "browse.html").read_text()
    # Each judge request offered its own type's labels: Ambiguous for tier II only.
    offered = {}
    for body in stub.requests:
        text = last_user_text(body)
        if "Answer with JSON only" in text:
            name = next(n for n in PIE_TYPES if _rubric_of(n) in text)
            enum = body["response_format"]["json_schema"]["schema"]["properties"]["verdict"]
            offered.setdefault(name, set()).add(tuple(enum["enum"]))
    assert offered["False Premise"] == {("True", "False")}
    assert offered["Hidden Human Preferences"] == {("True", "False")}
    assert offered["Subject Ambiguity"] == {("True", "Ambiguous", "False")}
    assert len(offered) == len(PIE_TYPES)


def test_rerun_makes_zero_calls_and_the_key_never_lands_on_disk(stub, tmp_path, capsys):
    assert run(stub, tmp_path) == 0
    calls = stub.calls
    assert run(stub, tmp_path) == 0
    assert (
        stub.calls == calls and "model calls: 0 (everything was cached)" in capsys.readouterr().out
    )
    assert all(h.get("Authorization") == f"Bearer {SECRET}" for h in stub.headers)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_a_crl_model_gets_its_good_token(stub, tmp_path):
    model = tmp_path / "merged-crl"
    model.mkdir()
    (model / "macaroon.json").write_text(json.dumps({"method": "crl", "conditioning": "good"}))
    assert main(["eval", "--backend", "openai", "--model", str(model), "--base_url",
                 stub.base_url, "--judge_base_url", stub.base_url, "--judge_model", "judge",
                 "--out", str(tmp_path / "out"), "--progress", "false"]) == 0  # fmt: skip
    asked = [
        last_user_text(b) for b in stub.requests if "Answer with JSON" not in last_user_text(b)
    ]
    assert len(asked) == 24 and all(q.startswith("good ") for q in asked)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["model"]["method"] == "crl" and metrics["model"]["conditioning"] == "good"


def test_judge_failures_are_their_own_category(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    down = {"judge": True}

    def faults(body):
        text = last_user_text(body)
        mug = "Answer with JSON only" in text and "mug" in text.lower()
        return "500" if mug and down["judge"] else None

    with stub_server(reply=scripted, faults=faults) as stub:
        assert run(stub, tmp_path, "--judge_max_retries", "0") == 1  # incomplete: exit 1
        metrics = json.loads((tmp_path / "metrics.json").read_text())
        out, table = capsys.readouterr().out, (tmp_path / "table.md").read_text()
        down["judge"] = False  # the judge answers again: the retry completes the run
        retry = f"macaroon eval --config {tmp_path / 'config.json'} --retry_failed true"
        assert main(retry.split()[1:]) == 0
    failed = sum(t["failed"] for t in metrics["types"].values())
    assert failed > 0 and metrics["failed"] == failed
    assert all(
        t["judged"] + t["unparsed"] + t["failed"] == t["n"] for t in metrics["types"].values()
    )
    # No AAR from verdicts that were never obtained, in either convention.
    assert metrics["incomplete"] and metrics["missing_verdicts"] == failed
    assert metrics["aar_all"] is None and metrics["aar"] is None
    assert metrics["missing"]["judge_failed"] == failed
    assert f"run incomplete: {failed} of 24 items have no verdict ({failed} judge calls" in out
    assert "AAR 0" not in out and retry in out
    assert f"judge: {failed} failed, by reason:" in out and "HTTP 500 after 1 attempt" in out
    assert f"incomplete ({failed} without verdict)" in table and retry in table
    done = json.loads((tmp_path / "metrics.json").read_text())
    assert not done["incomplete"] and done["aar_all"] is not None


def test_report_compares_runs_and_measures_agreement(stub, tmp_path, capsys):
    assert run(stub, tmp_path / "a") == 0
    labels = tmp_path / "labels.csv"
    rows = [json.loads(line) for line in (tmp_path / "a" / "items.jsonl").open()]
    with labels.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Image ID", "Question", "label"])
        for row in rows:
            writer.writerow([row["image_id"], row["question"], "True"])
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "a"), "--out",
                 str(tmp_path / "cmp"), "--agreement", str(labels)]) == 0  # fmt: skip
    agreement = json.loads((tmp_path / "cmp" / "agreement.json").read_text())
    assert agreement["False Premise"]["agreement"] == 1.0
    assert agreement["Unanswerable Questions"]["agreement"] == 0.0
    assert agreement["Hidden Human Preferences"]["left_out"] == 4
    compared = (tmp_path / "cmp" / "table.md").read_text()
    assert compared.count("| model-under-test |") == 2 * 2  # both runs, in both conventions


def test_bad_inputs_stop_before_any_model_call(stub, tmp_path, capsys, monkeypatch):
    pie = tmp_path / "pie"
    (pie / "images").mkdir(parents=True)
    (pie / "evaluation_dataset.jsonl").write_text(
        '{"Image ID": "x", "Question": "Why?", "Question Type": "Sarcasm"}\n{oops\n'
    )
    assert run(stub, tmp_path / "out", "--pie", str(pie)) == 2
    err = capsys.readouterr().err
    assert "2 bad row(s)" in err and "line 1: unknown Question Type" in err and "line 2" in err
    assert stub.calls == 0

    monkeypatch.delenv("OPENAI_API_KEY")
    assert main(["eval", "--backend", "openai", "--model", "m", "--base_url", stub.base_url,
                 "--out", str(tmp_path / "o2")]) == 2  # fmt: skip
    assert "needs an API key in $OPENAI_API_KEY" in capsys.readouterr().err
    assert stub.calls == 0


@pytest.mark.vllm
def test_make_eval_with_the_tiny_model_and_a_local_judge_server(tiny_model, vllm_server, tmp_path):
    """The real path: hf answers, a vLLM OpenAI-compatible server on loopback judges (the
    demo's test covers the server eval starts by itself for a judge folder)."""
    model, server = tiny_model("llava"), vllm_server("llava")
    command = [sys.executable, "-m", "commands.cli", "eval", "--model", str(model),
               "--judge_model", str(model), "--judge_base_url", server.base_url,
               "--out", str(tmp_path), "--max_tokens", "24",
               "--judge_max_tokens", "32", "--progress", "false"]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env=dict(os.environ)
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert sum(t["n"] for t in metrics["types"].values()) == 24 and metrics["failed"] == 0
    # The server keeps the judge's JSON compact and to the type's labels: all parse.
    assert metrics["unparsed"] == 0 and metrics["aar_all"] is not None
    for name in ("table.md", "plot.png", "browse.html"):
        assert (tmp_path / name).is_file()


def test_answers_cut_off_by_the_token_limit_are_counted(stub, tmp_path, capsys):
    # The model under test echoes the prompt ("ECHO: " + question): the 11 questions of
    # more than ten words hit --max_tokens 11.
    assert run(stub, tmp_path, "--max_tokens", "11") == 0
    answers = [json.loads(line) for line in (tmp_path / "generations.jsonl").open()]
    cut = [a for a in answers if a["finish_reason"] == "length"]
    assert len(cut) == 11 and len(answers) == 24
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["truncated"] == len(cut)
    assert sum(t["truncated"] for t in metrics["types"].values()) == len(cut)
    assert f"{len(cut)} answers cut off by the token limit" in (tmp_path / "table.md").read_text()
    assert f"{len(cut)} of 24 answers hit --max_tokens" in capsys.readouterr().out


def test_the_page_shows_the_explanation_of_a_verdict_cut_off_inside_it():
    from pipeline.judge import judge_explanation

    assert judge_explanation('{"verdict":"True","explanation":"it asks which') == "it asks which"
    assert judge_explanation('{"verdict":"True","explanation":"a \\"b\\""}') == 'a "b"'
    assert judge_explanation("Explanation: fine.\nFlag: True") == "Explanation: fine.\nFlag: True"


def test_report_sets_capability_beside_engagement(stub, tmp_path, capsys):
    """`make eval-general OUT=RUN` beside `make eval OUT=RUN`: the report gives both, and
    plots the AAR against the general score."""
    assert run(stub, tmp_path) == 0
    general = {"name": "model-under-test", "general_score": 0.6, "data": "bundled",
               "tasks": {"pope": {"metric": "pope_accuracy", "score": 0.75},
                         "mme": {"metric": "mme_perception_score", "score": 250.0}}}  # fmt: skip
    (tmp_path / "general.json").write_text(json.dumps(general))
    assert main(["report", str(tmp_path)]) == 0
    table = (tmp_path / "table.md").read_text()
    assert "| model | AAR (all items) | AAR (judged) | pope | mme | general score |" in table
    assert "| model-under-test | 0.25 | 0.40 | 0.75 | 250 | 0.60 |" in table
    assert (tmp_path / "capability.png").stat().st_size > 0

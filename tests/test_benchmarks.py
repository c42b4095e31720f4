"""Engagement benchmarks beyond PIE: each loads its bundled fixture (published format), is
answered and judged through `macaroon eval --benchmark`, and scores as it defines."""

import base64
import json

import pytest
from conftest import SAMPLES
from openai_stub import last_user_text, stub_server

from commands.cli import main
from evaluation.benchmarks import benchmark, mmupd, vizwiz

BENCH = SAMPLES / "benchmarks"


def scripted(body: dict) -> str:
    text = last_user_text(body)
    if "Answer with JSON only" in text:  # the judge: aligned when the answer withholds one
        response = text.split("Response:")[-1]
        aligned = "cannot" in response or "unanswerable" in response
        return json.dumps({"verdict": "True" if aligned else "False", "explanation": "x"})
    answers = {"What is on the table": "A. mugs", "Which animals": "C. birds",
               "What is this": "Mugs.", "How many cars": "four",
               "expiry date": "unanswerable", "back of this box": "It says hello."}  # fmt: skip
    if "What is on the table" in text and "A. mugs" not in text:
        return "I cannot answer: none of the options is on the table."  # the upd twin
    return next((a for q, a in answers.items() if q in text), "I cannot tell.")


@pytest.fixture
def stub(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with stub_server(reply=scripted) as server:
        yield server


def run(stub, out, *extra):
    return main(["eval", "--backend", "openai", "--model", "m", "--base_url", stub.base_url,
                 "--judge_base_url", stub.base_url, "--judge_model", "judge", "--out", str(out),
                 "--progress", "false", *extra])  # fmt: skip


def test_mmupd_fixture_in_its_published_tsv_format_loads_and_scores(stub, tmp_path):
    items = mmupd.load(mmupd.DEFAULT_DATA, tmp_path)
    assert [(i.gold["index"], i.gold["type"], i.question_type) for i in items] == [
        ("0", "standard", None), ("0", "upd", "Unanswerable Questions"),
        ("1", "standard", None), ("1", "upd", "Unanswerable Questions"),
    ]  # fmt: skip
    # The upd twin lacks the right option (AAD) and keeps it in masked_answer.
    assert "A. mugs" in items[0].question and "mugs" not in items[1].question
    assert items[1].gold["masked_answer"] == "mugs" and items[1].image.is_file()
    assert run(stub, tmp_path / "out", "--benchmark", "mmupd") == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    score = metrics["benchmark"]
    # Standard: 0 picked A (right), 1 picked C (wrong, B is). Upd: 0 withheld, 1 did not.
    assert score["standard_accuracy"] == 0.5 and score["upd_accuracy"] == 0.5
    assert score["dual_accuracy"] == 0.5 and score["pairs"] == 2
    assert metrics["types"]["Unanswerable Questions"]["align_rate_all"] == 0.5
    assert "arXiv 2403.20331" in score["citation"]


def test_mmupd_reads_options_as_its_matcher_does():
    options = {"A": "mugs", "B": "shoes", "C": "books"}
    assert mmupd.option_letter("A", options) == "A"
    assert mmupd.option_letter("(B) shoes", options) == "B"
    assert mmupd.option_letter("A. mugs or B. shoes", options) is None  # two options named
    assert mmupd.option_letter("I think mugs", options) is None


def test_vizwiz_fixture_in_its_published_json_format_loads_and_scores(stub, tmp_path):
    items = vizwiz.load(vizwiz.DEFAULT_DATA)
    unanswerable = "Unanswerable Questions"
    assert [i.question_type for i in items] == [None, None, unanswerable, unanswerable]
    assert all(len(i.gold["answers"]) == 10 and i.image.is_file() for i in items)
    assert run(stub, tmp_path / "out", "--benchmark", "vizwiz") == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    score = metrics["benchmark"]
    # "Mugs." and "four" match the humans after VQA normalization; "unanswerable" does; the
    # last answer does not.
    assert score["vqa_accuracy_answerable"] == 1.0
    assert score["vqa_accuracy_unanswerable"] == 0.5 and score["vqa_accuracy_all"] == 0.75
    assert metrics["types"]["Unanswerable Questions"]["align_rate_all"] == 0.5


def test_vqa_accuracy_is_the_leave_one_out_mean():
    assert vizwiz.vqa_accuracy("2", ["two"] * 2 + ["3"] * 8) == pytest.approx(
        (2 * (1 / 3) + 8 * (2 / 3)) / 10
    )


def test_bad_benchmark_files_are_refused_before_any_model_call(stub, tmp_path, capsys):
    bad = tmp_path / "mmaad_bad_base.tsv"
    rows = (BENCH / "mmupd" / "mmaad_sample_base.tsv").read_text().splitlines()
    cells = rows[1].split("\t")
    cells[rows[0].split("\t").index("image")] = base64.b64encode(b"not an image").decode()
    bad.write_text("\n".join([rows[0], "\t".join(cells), *rows[2:]]) + "\n")
    assert run(stub, tmp_path / "a", "--benchmark", "mmupd", "--data", str(bad)) == 2
    assert "line 2: the image column is not a base64-encoded image" in capsys.readouterr().err
    renamed = tmp_path / "upd.tsv"
    renamed.write_text((BENCH / "mmupd" / "mmaad_sample_base.tsv").read_text())
    assert run(stub, tmp_path / "b", "--benchmark", "mmupd", "--data", str(renamed)) == 2
    assert "named mmaad_*, mmiasd_* or mmivqd_*" in capsys.readouterr().err
    assert run(stub, tmp_path / "c", "--benchmark", "nope") == 2
    assert "unknown; choose pie or one of mmupd, vizwiz" in capsys.readouterr().err
    assert stub.calls == 0
    with pytest.raises(ValueError, match="unknown"):
        benchmark("clearvqa")

"""Bad input, as a new user gets it wrong, across every command.

Missing, empty, truncated, wrong-shaped, wrong-encoding and foreign files; typos in
options and config keys; folders where files are wanted and back; models and adapters
that are not there; endpoints that are down or misbehave. Each case asserts the exit code
(2: bad input, nothing done; 1: incomplete, finished records kept), that the message
names the file or option and says what to do, and that no traceback reaches the user.
Cases with records check that none is lost. All run in-process; none loads a model but
the one that needs a real image reader.
"""

from __future__ import annotations

import json
import shutil
import socket
from dataclasses import dataclass

import pytest
from conftest import CRITERIA, SAMPLES
from openai_stub import last_user_text, stub_server

from commands.cli import main

LATIN1 = "caf\xe9: \xe9t\xe9\n".encode("latin-1")  # not UTF-8


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]
    code: int
    says: tuple[str, ...]  # each must be in the output; {w}: the world folder, {url}: a dead port


def case(name: str, argv: str, code: int, *says: str) -> Case:
    return Case(name, tuple(argv.split()), code, says)


# Model-free options: an API model at a dead port, so nothing loads and nothing answers.
EV = "--backend openai --model m --base_url {url} --judge_base_url {url} --judge_model j"
IM = "--backend openai --model m --base_url {url} --max_retries 0 --progress false"

CASES = [
    # criteria
    case("criteria-missing", "criteria --criteria_dir {w}/nope", 2, "{w}/nope", "not found"),
    case("criteria-is-file", "criteria --criteria_dir {w}/file.txt", 2, "is a file", "folder"),
    case("criteria-empty-folder", "criteria --criteria_dir {w}/empty", 2, "no *.yaml criteria"),
    case("criteria-field-typo", "criteria --criteria_dir {w}/crit_typo", 2,
         "false_premise.yaml", "'preferred_criteria'"),
    case("criteria-not-utf8", "criteria --criteria_dir {w}/crit_latin1", 2,
         "false_premise.yaml", "save it as UTF-8"),
    case("criteria-wrong-shape", "criteria --criteria_dir {w}/crit_list", 2,
         "false_premise.yaml", "expected a mapping"),
    case("criteria-bad-tier", "criteria --criteria_dir {w}/crit_tier", 2, "unknown tier",
         "use one of"),
    # configs and options
    case("config-missing", "eval --config {w}/nope.yaml", 2, "nope.yaml", "not found"),
    case("config-is-folder", "eval --config {w}/empty", 2, "--config {w}/empty", "is a folder"),
    case("config-key-typo", "imagine --config {w}/typo.yaml", 2, "typo.yaml", "modle",
         "did you mean model?", "macaroon imagine --help"),
    case("config-not-yaml", "eval --config {w}/broken.yaml", 2, "broken.yaml", "not valid YAML"),
    case("config-a-list", "eval --config {w}/list.yaml", 2, "list.yaml", "expected a mapping"),
    case("config-not-utf8", "report --config {w}/latin1.yaml", 2, "latin1.yaml",
         "save it as UTF-8"),
    case("config-bad-value", "eval --config {w}/badtype.yaml", 2, "badtype.yaml",
         "option max_tokens: 'lots' is not a whole number"),
    case("option-typo", "eval --modle x", 2, "--modle", "did you mean --model", "--help"),
    case("option-bad-value", "eval --max_tokens lots", 2, "--max_tokens", "invalid int value"),
    case("train-config-key-typo", "train --config {w}/train_typo.yaml", 2, "learning_rat",
         "did you mean learning_rate"),
    # imagine and its inputs
    case("images-missing", f"imagine {IM} --images {{w}}/nope --out {{w}}/o", 2,
         "--images {w}/nope", "not found"),
    case("images-is-file", f"imagine {IM} --images {{w}}/file.txt --out {{w}}/o", 2,
         "--images", "is a file"),
    case("images-none-inside", f"imagine {IM} --images {{w}}/empty --out {{w}}/o", 2,
         "--images", "no images"),
    case("imagine-stages-typo", f"imagine {IM} --stages questons --out {{w}}/o", 2,
         "--stages", "questons", "use questions"),
    case("questions-missing", f"imagine {IM} --questions {{w}}/nope.jsonl --out {{w}}/o", 2,
         "--questions {w}/nope.jsonl", "not found"),
    case("questions-foreign", f"imagine {IM} --questions {{w}}/pie/evaluation_dataset.jsonl "
         "--out {w}/o", 2, "evaluation_dataset.jsonl", "line 1: missing image"),
    case("questions-truncated", f"imagine {IM} --questions {{w}}/trunc.jsonl --out {{w}}/o", 2,
         "trunc.jsonl", "line 2: not a JSON object"),
    case("questions-not-utf8", f"imagine {IM} --questions {{w}}/latin1.jsonl --out {{w}}/o", 2,
         "--questions", "save it as UTF-8"),
    case("model-missing-path", "imagine --model {w}/models/typo --out {w}/o", 2,
         "--model {w}/models/typo", "model folder not found", "macaroon tiny-model"),
    case("model-hub-id-offline", "imagine --model no-such-org/no-such-vlm --out {w}/o", 2,
         "no-such-org/no-such-vlm", "HF_HUB_OFFLINE", "not in the local Hugging Face cache"),
    case("model-is-file", "imagine --model {w}/file.txt --out {w}/o", 2, "is a file",
         "config.json"),
    case("model-is-adapter", "imagine --model {w}/adapter --out {w}/o", 2, "LoRA adapter",
         "--adapter"),
    case("model-folder-without-config", "imagine --model {w}/empty --out {w}/o", 2,
         "holds no config.json"),
    case("out-is-a-file", f"imagine {IM} --out {{w}}/file.txt", 2, "{w}/file.txt",
         "a file is in the way", "--out"),
    case("imagine-endpoint-down", f"imagine {IM} --out {{w}}/down", 1, "{url}",
         "stage questions stopped early", "could not be reached", "rerun the same command",
         "exit 1"),
    # import
    case("import-nothing", "import --out {w}/i", 2, "give one or more files"),
    case("import-missing", "import {w}/nope.json --out {w}/i", 2, "nope.json", "file not found"),
    case("import-empty", "import {w}/empty.json --out {w}/i", 2, "empty.json", "not valid JSON"),
    case("import-truncated", "import {w}/trunc.json --out {w}/i", 2, "trunc.json",
         "not valid JSON at line 1"),
    case("import-wrong-shape", "import {w}/dict.json --out {w}/i", 2, "dict.json",
         "must be a JSON list of records"),
    case("import-not-utf8", "import {w}/latin1.json --out {w}/i", 2, "latin1.json",
         "save it as UTF-8"),
    case("import-folder", "import {w}/empty --out {w}/i", 2, "{w}/empty", "not a file"),
    case("import-foreign", "import {w}/pie/evaluation_dataset.jsonl --out {w}/i", 2,
         "evaluation_dataset.jsonl", "cannot tell the file's kind", "name it one of"),
    case("import-csv", "import {w}/labels.csv --out {w}/i", 2, "labels.csv",
         "expected a .json list or a .jsonl file"),
    # build and browse
    case("build-nothing-to-build", f"build {IM} --out {{w}}/empty", 2, "holds no imagined records",
         "macaroon imagine --out {w}/empty"),
    case("browse-nothing", "browse", 2, "give one imagine output folder"),
    case("browse-missing", "browse {w}/nope", 2, "{w}/nope/pairs.jsonl", "macaroon imagine"),
    case("browse-a-file", "browse {w}/file.txt", 2, "{w}/file.txt", "is a file"),
    case("browse-damaged", "browse {w}/damaged_pairs", 2, "pairs.jsonl: line 2 is not JSON",
         "macaroon build --out"),
    # train
    case("train-method-typo", "train --method crll", 2, "METHOD 'crll'", "choose one of"),
    case("train-model-missing", "train --model_name_or_path {w}/models/typo --data {w}/empty", 2,
         "--model_name_or_path {w}/models/typo", "not found"),
    case("train-data-missing", "train --model_name_or_path {w}/model --data {w}/nope", 2,
         "{w}/nope", "not a saved DatasetDict", "macaroon import"),
    case("train-data-foreign", "train --model_name_or_path {w}/model --data {w}/pie", 2,
         "{w}/pie", "not a saved DatasetDict"),
    case("train-init-adapter-missing", "train --method grpo --model_name_or_path {w}/model "
         "--init_adapter {w}/nope --judge_base_url {url}", 2, "--init_adapter {w}/nope",
         "not found"),
    # generate, judge, eval
    case("pie-missing", f"eval {EV} --pie {{w}}/nope.jsonl --out {{w}}/e", 2,
         "--pie {w}/nope.jsonl", "not found"),
    case("pie-folder-without-file", f"eval {EV} --pie {{w}}/empty --out {{w}}/e", 2,
         "--pie {w}/empty", "no evaluation_dataset.jsonl"),
    case("pie-empty", f"eval {EV} --pie {{w}}/pie_empty/evaluation_dataset.jsonl --out {{w}}/e",
         2, "no rows", "'Question Type'"),
    case("pie-truncated", f"generate {EV} --pie {{w}}/pie_trunc --out {{w}}/e", 2,
         "evaluation_dataset.jsonl", "line 2: not valid JSON"),
    case("pie-not-utf8", f"judge {EV} --pie {{w}}/pie_latin1 --out {{w}}/e", 2, "--pie",
         "save it as UTF-8"),
    case("pie-foreign", f"eval {EV} --pie {{w}}/trunc.jsonl --out {{w}}/e", 2, "bad row(s)",
         "line 1: missing or empty 'Image ID'"),
    case("pie-type-typo", f"eval {EV} --pie {{w}}/pie_typo --out {{w}}/e", 2,
         "unknown Question Type 'Fasle Premise'", "known: False Premise"),
    case("pie-image-missing", f"eval {EV} --pie {{w}}/pie_noimage --out {{w}}/e", 2,
         "line 1: image", "not found"),
    case("adapter-missing", f"eval {EV} --adapter {{w}}/nope --out {{w}}/e", 2,
         "--adapter {w}/nope", "adapter folder not found", "macaroon train"),
    case("adapter-not-a-training-output", f"eval {EV} --adapter {{w}}/empty --out {{w}}/e", 2,
         "--adapter {w}/empty", "holds neither adapter_config.json nor config.json"),
    case("judge-model-missing", "eval --backend openai --model m --base_url {url} "
         "--judge_backend hf --judge_model {w}/judge --out {w}/e", 2,
         "--judge_model {w}/judge", "not found"),
    case("generate-model-missing", "generate --model {w}/models/typo --out {w}/e", 2,
         "--model {w}/models/typo", "not found"),
    case("eval-stages-typo", f"eval {EV} --stages generate,jugde --out {{w}}/e", 2, "--stages",
         "jugde"),
    case("judge-before-generate", f"judge {EV} --out {{w}}/nothing_generated", 1,
         "run incomplete", "without an answer", "--retry_failed true"),
    # report
    case("report-nothing", "report", 2, "give one or more run folders"),
    case("report-missing", "report {w}/nope", 2, "{w}/nope: no metrics.json", "macaroon eval"),
    case("report-a-file", "report {w}/file.txt", 2, "{w}/file.txt", "is a file"),
    case("report-damaged-metrics", "report {w}/run_damaged", 2, "metrics.json",
         "not valid JSON", "--stages report"),
    case("report-foreign-metrics", "report {w}/run_foreign", 2, "metrics.json",
         "not the metrics.json of a `macaroon eval` run"),
    # tiny-model
    case("tiny-model-arch-typo", "tiny-model --arch lava --out {w}/t", 2, "--arch 'lava'",
         "choose one of"),
    case("tiny-model-out-is-a-file", "tiny-model --out {w}/file.txt", 2, "{w}/file.txt",
         "a file is in the way"),
]  # fmt: skip


def dead_url() -> str:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The files a new user gets wrong, made once for every case."""
    w = tmp_path_factory.mktemp("bad")
    (w / "file.txt").write_text("hello\n")
    (w / "empty").mkdir()
    (w / "latin1.yaml").write_bytes(LATIN1)
    (w / "latin1.json").write_bytes(b'[{"image": "caf\xe9.jpg"}]')
    (w / "latin1.jsonl").write_bytes(LATIN1)
    (w / "broken.yaml").write_text("max_tokens: [1, 2\n")
    (w / "list.yaml").write_text("- model\n- out\n")
    (w / "typo.yaml").write_text("modle: some/model\n")
    (w / "badtype.yaml").write_text("max_tokens: lots\n")
    (w / "train_typo.yaml").write_text("method: crl\nlearning_rat: 0.0001\n")
    (w / "empty.json").write_text("")
    (w / "trunc.json").write_text('[{"image": "a.jpg", "conversations": [{"from"')
    (w / "trunc.jsonl").write_text('{"image": "a.jpg", "question": "Why?"}\n{"image": "b.j\n')
    (w / "dict.json").write_text('{"records": []}')
    (w / "labels.csv").write_text("Image ID,Question,label\nsample_001,Why?,True\n")
    _criteria(w)
    _pie(w)
    _models(w)
    (w / "damaged_pairs").mkdir()
    (w / "damaged_pairs" / "pairs.jsonl").write_text('{"image": "x"}\n{"image": \n')
    for name, text in (("run_damaged", '{"name": "r", "types": '), ("run_foreign", "[1, 2]")):
        (w / name).mkdir()
        (w / name / "metrics.json").write_text(text)
    return w


def _criteria(w):
    for name, edit in {
        "crit_typo": lambda t: t.replace("preferred_criteria:", "prefered_criteria:"),
        "crit_latin1": None,
        "crit_list": lambda t: "- name\n- tier\n",
        "crit_tier": lambda t: t.replace("tier: I\n", "tier: IV\n"),
    }.items():
        shutil.copytree(CRITERIA, w / name)
        target = w / name / "false_premise.yaml"
        if edit is None:
            target.write_bytes(target.read_bytes() + b"# " + LATIN1)
        else:
            target.write_text(edit(target.read_text()))


def _pie(w):
    pie = w / "pie"
    shutil.copytree(SAMPLES, pie, ignore=shutil.ignore_patterns("*.json", "README.md"))
    rows = (pie / "evaluation_dataset.jsonl").read_text().splitlines()
    variants = {
        "pie_empty": "\n",
        "pie_trunc": rows[0] + "\n" + rows[1][:30] + "\n",
        "pie_latin1": None,
        "pie_typo": rows[0].replace('"False Premise"', '"Fasle Premise"') + "\n",
        "pie_noimage": rows[0].replace("sample_001", "sample_999") + "\n",
    }
    for name, text in variants.items():
        (w / name).mkdir()
        (w / name / "images").symlink_to(pie / "images")
        data = rows[0].encode() + b"\n" + LATIN1 if text is None else text.encode()
        (w / name / "evaluation_dataset.jsonl").write_bytes(data)


def _models(w):
    (w / "model").mkdir()  # passes the up-front check; nothing loads it in these cases
    (w / "model" / "config.json").write_text("{}")
    (w / "adapter").mkdir()
    (w / "adapter" / "adapter_config.json").write_text("{}")


def run(argv) -> tuple[int, str]:
    try:
        return main(list(argv)), ""
    except SystemExit as exit_:  # argparse refuses a value before our code sees it
        return exit_.code, ""


@pytest.mark.parametrize("bad", CASES, ids=[c.name for c in CASES])
def test_bad_input_names_the_file_or_option_and_the_fix(bad, world, capsys, monkeypatch):
    monkeypatch.chdir(world)  # a default relative path must never land in the project
    url = dead_url()
    fill = {"w": str(world), "url": url}
    code, _ = run(a.format(**fill) for a in bad.argv)
    out = capsys.readouterr()
    text = out.out + out.err
    assert code == bad.code, text
    for words in bad.says:
        assert words.format(**fill) in text, f"{words!r} not in:\n{text}"
    assert "Traceback" not in text and "cannot write" not in text
    assert not (world / "outputs").exists()  # no default model was built on the way


def test_a_damaged_record_file_is_named_by_line_and_left_as_it_was(world, capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    good = {"key": "k1", "status": "ok", "text": "Why?", "stage": "questions"}
    damaged = json.dumps(good) + "\n" + "{not a record\n" + json.dumps({**good, "key": "k2"}) + "\n"
    (out / "questions.jsonl").write_text(damaged)
    (out / "responses.jsonl").write_text(json.dumps(good) + "\n")
    argv = ["build", *IM.format(url=dead_url()).split(), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "questions.jsonl: line 2 is not a record" in err and "delete that line" in err
    assert (out / "questions.jsonl").read_text() == damaged  # nothing lost, nothing rewritten


def test_an_endpoint_that_goes_down_stops_early_keeps_records_and_the_rerun_resumes(
    tmp_path, capsys
):
    calls = {"n": 0}

    def goes_down(body):
        calls["n"] += 1
        return "drop" if calls["n"] > 10 else None  # ten answers, then nothing connects

    out = tmp_path / "imagine"
    with stub_server(faults=goes_down) as server:
        argv = ["imagine", "--backend", "openai", "--model", "m", "--base_url", server.base_url,
                "--max_retries", "0", "--concurrency", "1", "--stages", "questions",
                "--progress", "false", "--out", str(out)]  # fmt: skip
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert f"the endpoint {server.base_url} could not be reached" in err
        assert "stage questions stopped early, 10 of 72 items done" in err
        records = [json.loads(line) for line in (out / "questions.jsonl").open()]
        assert len(records) == 10 and all(r["status"] == "ok" for r in records)
        calls["n"] = -1000  # the server is back: the same command goes on from there
        assert main(argv) == 0
    assert "72 items: 62 generated, 10 cached, 0 failed" in capsys.readouterr().out


def test_a_judge_that_is_down_keeps_the_answers_and_records_no_failures(tmp_path, capsys):
    out, judge = tmp_path / "eval", dead_url()
    with stub_server(reply=lambda body: "ECHO " + last_user_text(body)) as server:
        argv = ["eval", "--backend", "openai", "--model", "m", "--base_url", server.base_url,
                "--judge_base_url", judge, "--judge_model", "j", "--judge_max_retries", "0",
                "--progress", "false", "--out", str(out)]  # fmt: skip
        assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"stage judge stopped early, 0 of 24 items done: the endpoint {judge}" in err
    answers = [json.loads(line) for line in (out / "generations.jsonl").open()]
    assert len(answers) == 24 and all(a["status"] == "ok" for a in answers)
    judged = (out / "judgments.jsonl").read_text() if (out / "judgments.jsonl").exists() else ""
    assert '"failed"' not in judged  # held back: a rerun judges them, no --retry_failed needed


def test_a_misbehaving_judge_gives_an_incomplete_run_and_no_aar(tmp_path, capsys):
    def garbled(body):  # the judge answers 200 with no chat completion in it
        return "no_choices" if "Answer with JSON only" in last_user_text(body) else None

    out = tmp_path / "eval"
    with stub_server(faults=garbled) as server:
        argv = ["eval", "--backend", "openai", "--model", "m", "--base_url", server.base_url,
                "--judge_base_url", server.base_url, "--judge_model", "j",
                "--judge_max_retries", "0", "--progress", "false", "--out", str(out)]  # fmt: skip
        assert main(argv) == 1
    text = capsys.readouterr().out
    assert "judge: 24 failed, by reason:" in text and "invalid response body" in text
    assert "e.g. image_id sample_001, question_type " in text  # one example record
    assert "run incomplete: 24 of 24 items have no verdict (24 judge calls failed)" in text
    assert "AAR" not in text.split("run incomplete")[1].split("\n")[0].replace("no AAR", "")
    assert main(["report", str(out)]) == 1  # the report says so too, and exits 1
    table = capsys.readouterr().out
    assert "incomplete (24 without verdict)" in table and "--retry_failed true" in table


def test_one_corrupt_image_among_good_ones_is_named_with_its_reason(tiny_model, sample_images,
                                                                     tmp_path, capsys):  # fmt: skip
    images = sample_images("sample_001.jpg", "sample_002.jpg")
    (images / "broken.jpg").write_bytes((images / "sample_001.jpg").read_bytes()[:400])
    argv = ["imagine", "--model", str(tiny_model("llava")), "--images", str(images),
            "--stages", "questions", "--question_max_tokens", "4", "--progress", "false",
            "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 1
    text = capsys.readouterr().out
    assert "questions: 6 failed, by reason:" in text
    assert f"6 x {images / 'broken.jpg'}: cannot read image" in text and "replace or remove" in text
    assert f"e.g. image {images / 'broken.jpg'}" in text
    assert "retry only the failed items: macaroon imagine" in text and "--retry_failed true" in text
    records = [json.loads(line) for line in (tmp_path / "o" / "questions.jsonl").open()]
    assert sum(r["status"] == "ok" for r in records) == 12  # the good images' questions kept

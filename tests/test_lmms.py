"""lmms-eval: PIE as its task agrees with `make eval`; `macaroon eval-general` scores the
general tasks on their bundled files in published formats, read by lmms-eval's own loader."""

import json
import shutil

import pytest
from conftest import REPO
from openai_stub import last_user_text, stub_server

from commands.cli import main

pytest.importorskip("lmms_eval")

TASKS = REPO / "evaluation" / "lmms_tasks"


def pie_task():
    from lmms_eval.tasks import TaskManager, get_task_dict

    manager = TaskManager(verbosity="ERROR", include_path=str(TASKS), include_defaults=False)
    return get_task_dict(["macaroon_pie"], manager)["macaroon_pie"]


@pytest.mark.vllm
def test_the_pie_task_gives_the_numbers_of_make_eval(tiny_model, vllm_server, tmp_path,
                                                      monkeypatch):  # fmt: skip
    """`make eval` answers and judges PIE; the lmms-eval task, given the same answers and
    `make eval`'s judge records, finds every judge request it makes already stored (the same
    prompts, judge and settings: the same keys), and its aggregations give the same AAR and
    Align Rates."""
    from evaluation.lmms_pie import close_session, session, type_metric

    model, server = tiny_model("llava"), vllm_server("llava")
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(model), "--judge_model", str(model),
                 "--judge_base_url", server.base_url, "--out", str(out), "--max_tokens", "16",
                 "--judge_max_tokens", "32", "--progress", "false"]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    answers = {(r["image_id"], r["question"]): r["text"]
               for r in map(json.loads, (out / "generations.jsonl").open())}  # fmt: skip

    (tmp_path / "lmms").mkdir()
    shutil.copy(out / "judgments.jsonl", tmp_path / "lmms" / "judgments.jsonl")
    for name, value in {"MACAROON_JUDGE_MODEL": str(model), "MACAROON_JUDGE_MAX_TOKENS": "32",
                        "MACAROON_JUDGE_BASE_URL": server.base_url,
                        "MACAROON_JUDGE_RECORDS": str(tmp_path / "lmms" / "judgments.jsonl")
                        }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    task = pie_task()  # lmms-eval's json loader reads the bundled PIE file
    docs = list(task.test_docs())
    assert len(docs) == 24 and task.doc_to_text(docs[0]) == docs[0]["Question"]
    values: dict[str, list] = {}
    try:
        for doc in docs:
            answer = answers[(doc["Image ID"], doc["Question"])]
            for metric, value in task.process_results(doc, [answer]).items():
                values.setdefault(metric, []).append(value)
        assert session().calls == 0  # every request's key was among make eval's records
    finally:
        close_session()
    aggregate = {m: task.aggregation()[m](v) for m, v in values.items()}
    for key in ("aar_all", "aar", "aar_weighted_all", "aar_weighted"):
        assert aggregate[key] == pytest.approx(metrics[key]), key
    for name, figures in metrics["types"].items():
        assert aggregate[type_metric(name)] == pytest.approx(figures["align_rate_all"]), name
    stored = [json.loads(line)["key"] for line in (tmp_path / "lmms" / "judgments.jsonl").open()]
    assert len(set(stored)) == 24  # nothing was added: no request of its own


def test_the_pie_task_refuses_bad_rows_and_names_the_images_setting(tmp_path, monkeypatch):
    """process_docs (what pie.yaml runs on lmms-eval's rows) checks them as `make eval` does.
    Called directly: lmms-eval itself retries a failing task build five times, 8 s."""
    import datasets
    from evaluation.lmms_pie import process_docs
    from pipeline.pie import PieError

    images = tmp_path / "images"
    shutil.copytree(REPO / "datasets" / "samples" / "images", images)
    (images / "sample_003.jpg").unlink()
    monkeypatch.setenv("MACAROON_PIE_IMAGES", str(images))
    rows = datasets.load_dataset(
        "json", data_files=str(REPO / "datasets/samples/evaluation_dataset.jsonl"), split="train"
    )
    with pytest.raises(PieError) as err:
        process_docs(rows)
    assert "row 5: image" in str(err.value) and "MACAROON_PIE_IMAGES" in str(err.value)
    monkeypatch.setenv("MACAROON_PIE_IMAGES", str(REPO / "datasets" / "samples" / "images"))
    assert process_docs(rows)[4]["image_path"].endswith("sample_003.jpg")


class GoldModel:
    """Answers every general task with its gold answer (or `wrong` ones), so the bundled
    files and lmms-eval's scoring are checked without a model's randomness."""

    def __new__(cls, wrong: bool = False):
        from lmms_eval.api.model import lmms

        class Gold(lmms):
            def generate_until(self, requests):
                return [self.answer(*r.args[3:6]) for r in requests]

            def answer(self, doc_id, task, split):
                doc = self.task_dict[task][split][doc_id]
                if task == "scienceqa_img":
                    gold = "ABCDE"[doc["answer"] + (1 if wrong else 0)]
                else:
                    gold = doc["answer"]
                    gold = {"yes": "no", "no": "yes"}[gold.lower()] if wrong else gold
                return gold

            def loglikelihood(self, requests):
                raise NotImplementedError

            def generate_until_multi_round(self, requests):
                raise NotImplementedError

        return Gold()


def test_the_bundled_general_files_score_as_their_tasks_define(tmp_path):
    from evaluation.general import GeneralConfig, run_general

    cfg = GeneralConfig(out=str(tmp_path / "right"))
    right = run_general(cfg, model=GoldModel())
    assert {t: r["n"] for t, r in right["tasks"].items()} == {
        "pope": 4, "mme": 4, "scienceqa_img": 3}  # fmt: skip
    assert right["tasks"]["pope"]["score"] == 1.0
    assert right["tasks"]["mme"]["score"] == 400.0  # two categories, 200 each
    assert right["tasks"]["scienceqa_img"]["score"] == 1.0 and right["general_score"] == 1.0
    wrong = run_general(GeneralConfig(out=str(tmp_path / "wrong")), model=GoldModel(True))
    assert wrong["general_score"] == 0.0
    # Each override is lmms-eval's own task YAML with only the rows' source replaced.
    override = (tmp_path / "right" / "lmms_tasks" / "pope.yaml").read_text()
    assert "lmms_eval/tasks/pope/pope.yaml" in override and "dataset_path: parquet" in override


def test_make_eval_general_on_the_tiny_model_gives_a_score_per_task(tiny_model, tmp_path, capsys):
    out = tmp_path / "general"
    assert main(["eval-general", "--model", str(tiny_model("llava")), "--out", str(out)]) == 0
    report = json.loads((out / "general.json").read_text())
    assert set(report["tasks"]) == {"pope", "mme", "scienceqa_img"}
    for result in report["tasks"].values():
        assert isinstance(result["score"], float) and result["n"] > 0
    assert 0.0 <= report["general_score"] <= 1.0 and report["failed_answers"] == 0
    assert "general score (mean of the scores on a 0-1 scale)" in capsys.readouterr().out


def test_a_crl_model_answers_general_tasks_with_its_good_token(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    model = tmp_path / "merged-crl"
    model.mkdir()
    (model / "macaroon.json").write_text(json.dumps({"method": "crl", "conditioning": "good"}))
    with stub_server(reply="Yes") as stub:
        assert main(["eval-general", "--backend", "openai", "--model", str(model),
                     "--base_url", stub.base_url, "--tasks", "pope",
                     "--out", str(tmp_path / "out")]) == 0  # fmt: skip
        asked = [last_user_text(body) for body in stub.requests]
    assert len(asked) == 4 and all(q.startswith("good Is there") for q in asked)
    # lmms-eval's own prompt for POPE, after the question.
    assert all(q.endswith("Answer the question using a single word or phrase.") for q in asked)
    report = json.loads((tmp_path / "out" / "general.json").read_text())
    assert report["tasks"]["pope"]["score"] == 0.5  # "yes" to two yes and two no questions


def test_eval_general_refuses_unknown_tasks_and_missing_data(tmp_path, capsys):
    assert main(["eval-general", "--tasks", "nope", "--out", str(tmp_path / "a")]) == 2
    assert "--tasks nope: not an lmms-eval task" in capsys.readouterr().err
    empty = tmp_path / "data"
    empty.mkdir()
    assert main(["eval-general", "--data", str(empty), "--tasks", "pope",
                 "--out", str(tmp_path / "b")]) == 2  # fmt: skip
    assert "no pope/SPLIT.parquet (or .jsonl) there" in capsys.readouterr().err


def test_lmms_eval_finds_our_model_through_the_entry_point():
    """pyproject.toml registers `--model macaroon` (an installed copy reads it from there;
    the manifest is registered by hand here, as lmms-eval does with entry points)."""
    import tomllib

    from lmms_eval.models import MODEL_REGISTRY_V2, get_model

    from evaluation.lmms_model import MacaroonLMM
    from evaluation.lmms_plugin import MANIFEST

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["lmms_eval.models"]["macaroon"] == (
        "evaluation.lmms_plugin:MANIFEST"
    )
    MODEL_REGISTRY_V2.register_manifest(MANIFEST, overwrite=True)
    assert get_model("macaroon") is MacaroonLMM

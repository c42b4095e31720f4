"""Record keys hold what determines a result and nothing that does not (docs/DESIGN.md §6).

Retraining an adapter into the same folder, moving a Hub revision or editing a model's
chat template must make new answers; batch size, concurrency and the backend's retries
must not.
"""

import json
import shutil

import pytest
from conftest import SAMPLES
from openai_stub import stub_server
from train_data import save_templated

from commands.cli import main
from pipeline.fingerprint import model_identity

VERDICT = '{"verdict": "True", "explanation": "fine"}'


def judge_only(body):  # the judge of these tests; the model under test is local
    return VERDICT


def train(model, data, out, seed):
    return main(["train", "--config", "configs/train/crl.yaml", "--data", str(data),
                 "--model_name_or_path", str(model), "--output_dir", str(out),
                 "--max_steps", "2", "--per_device_train_batch_size", "2",
                 "--gradient_accumulation_steps", "1", "--gradient_checkpointing", "false",
                 "--learning_rate", "5e-2", "--save_strategy", "no",
                 "--seed", str(seed)])  # fmt: skip


def evaluate(adapter, stub, out, *extra):
    assert main(["eval", "--adapter", str(adapter), "--judge_base_url", stub.base_url,
                 "--judge_model", "judge", "--out", str(out), "--max_tokens", "6",
                 "--progress", "false", *extra]) == 0  # fmt: skip
    return json.loads((out / "metrics.json").read_text())


def generated(metrics, stage="generate"):
    return next(s["generated"] for s in metrics["stages"] if s["name"] == stage)


def test_retraining_into_the_same_folder_gives_new_answers(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    data = save_templated(tmp_path / "data", image_names=range(1, 3))
    adapter, run = tmp_path / "crl", tmp_path / "eval"
    assert train(tiny_model("llava"), data, adapter, seed=0) == 0
    with stub_server(reply=judge_only) as stub:
        first = evaluate(adapter, stub, run)
        assert generated(first) == 24
        # Runtime knobs decide nothing: everything is reused.
        again = evaluate(adapter, stub, run, "--batch_size", "3", "--judge_concurrency", "2",
                         "--max_retries", "1", "--timeout", "30")  # fmt: skip
        assert again["model_calls"] == 0
        # The same folder, other weights: every answer is made again.
        shutil.rmtree(adapter)
        assert train(tiny_model("llava"), data, adapter, seed=1) == 0
        retrained = evaluate(adapter, stub, run)
        assert generated(retrained) == 24


def test_an_adapter_without_its_record_says_how_to_evaluate_it(tiny_model, tmp_path, capsys):
    data = save_templated(tmp_path / "data", image_names=range(1, 3))
    adapter = tmp_path / "crl"
    assert train(tiny_model("llava"), data, adapter, seed=0) == 0
    (adapter / "macaroon.json").unlink()
    with stub_server(reply=judge_only) as stub:
        argv = ["eval", "--adapter", str(adapter), "--judge_base_url", stub.base_url,
                "--judge_model", "judge", "--out", str(tmp_path / "eval"), "--max_tokens", "4",
                "--progress", "false", "--model", str(tiny_model("llava"))]  # fmt: skip
        assert main(argv) == 2
        assert "pass --conditioning good (trained with CRL)" in capsys.readouterr().err
        assert stub.calls == 0
        assert main([*argv, "--conditioning", "good"]) == 0
    asked = [json.loads(line) for line in (tmp_path / "eval" / "generations.jsonl").open()]
    assert asked and all(r["method"] is None for r in asked)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["model"]["conditioning"] == "good"


def test_imagination_keys_follow_the_chat_template(tiny_model, sample_images, tmp_path):
    """Editing only the model's chat template makes every imagined record again."""
    images = sample_images("sample_001.jpg")
    model = tmp_path / "model"
    shutil.copytree(tiny_model("llava"), model)
    argv = ["imagine", "--model", str(model), "--images", str(images), "--out",
            str(tmp_path / "out"), "--question_max_tokens", "8", "--response_max_tokens", "8",
            "--progress", "false"]  # fmt: skip
    assert main(argv) in (0, 1)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["model_calls"] > 0
    assert main(argv) in (0, 1)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["model_calls"] == 0
    template = model / "chat_template.jinja"
    template.write_text(template.read_text().replace("ASSISTANT:", "ASSISTANT: "))
    assert main(argv) in (0, 1)
    again = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert again["model_calls"] == summary["model_calls"]


def test_a_hub_revision_is_keyed_by_the_commit_it_points_to(tmp_path, monkeypatch):
    from huggingface_hub import constants

    refs = tmp_path / "models--org--vlm" / "refs"
    refs.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    (refs / "main").write_text("a" * 40)
    first = model_identity("org/vlm")
    assert first["revision"] == "a" * 40
    (refs / "main").write_text("b" * 40)  # the branch moved: a new key
    assert model_identity("org/vlm") != first
    (refs / "v1").write_text("c" * 40)
    assert model_identity("org/vlm", "v1")["revision"] == "c" * 40


def test_an_api_model_is_keyed_by_name_and_endpoint():
    a = model_identity("gpt-4o-2024-08-06", endpoint="https://api.openai.com/v1")
    b = model_identity("gpt-4o-2024-08-06", endpoint="http://127.0.0.1:8000/v1")
    assert a != b and a == model_identity("gpt-4o-2024-08-06", endpoint="https://api.openai.com/v1")


@pytest.mark.parametrize(("arch", "changes"), [("qwen2-vl", True), ("llava", False)])
def test_the_image_token_cap_is_keyed_where_it_changes_the_prompt(tiny_model, arch, changes):
    from pipeline.backends import BackendConfig, backend_identity

    folder = str(tiny_model(arch, images="published"))
    capped = backend_identity(BackendConfig(model=folder, max_image_tokens=1280))
    free = backend_identity(BackendConfig(model=folder, max_image_tokens=0))
    assert (capped != free) is changes
    # Batch size, concurrency and retries are not part of it.
    assert capped == backend_identity(
        BackendConfig(
            model=folder, max_image_tokens=1280, batch_size=1, concurrency=2, max_retries=0
        )
    )


def test_a_served_judge_is_keyed_by_its_structured_output_settings(tiny_model, monkeypatch):
    """The server started for a judge folder decides what a constrained verdict may hold:
    judgments made under other settings (e.g. free whitespace) are not reused."""
    from conftest import CRITERIA

    from pipeline import serve
    from pipeline.backends import BackendConfig, Sampling
    from pipeline.criteria import load_criteria
    from pipeline.judge import judge_identity, judge_item

    folder = str(tiny_model("llava"))
    qtype = load_criteria(CRITERIA)["False Premise"]
    image = next(SAMPLES.glob("images/*"))

    def key(cfg, structured):
        identity = judge_identity(cfg, structured)
        return judge_item("{{ question }} {{ response }}", qtype, image, "Q?", "A.", identity,
                          Sampling(max_tokens=8), structured=structured).key  # fmt: skip

    served = BackendConfig(backend="openai", model=folder)
    demo = BackendConfig(backend="openai", model=folder, base_url="http://127.0.0.1:8001/v1")
    before = {flag: key(served, flag) for flag in (True, False)}
    demo_before = key(demo, True)
    local = key(BackendConfig(backend="hf", model=folder), False)
    monkeypatch.setattr(serve, "STRUCTURED_OUTPUTS", {**serve.STRUCTURED_OUTPUTS,
                                                      "disable_any_whitespace": False})  # fmt: skip
    assert key(served, True) != before[True]
    assert key(demo, True) != demo_before  # the demo's server, started once for two runs
    # Unconstrained judgments, and those of a server elsewhere, do not depend on it.
    assert key(served, False) == before[False] == local
    user_server = BackendConfig(backend="openai", model=folder, base_url="http://10.0.0.9:8000/v1")
    assert key(user_server, True) == judge_item(
        "{{ question }} {{ response }}", qtype, image, "Q?", "A.",
        judge_identity(user_server, False), Sampling(max_tokens=8), structured=True,
    ).key  # fmt: skip

"""Trained adapters on every backend, without a vLLM engine: how vLLM will serve each one
(as a LoRA, or merged once), imagination from an adapter, and `macaroon serve`'s refusals.

The engines and the server themselves run in tests/test_vllm.py.
"""

import json
import shutil
from pathlib import Path

from conftest import CRITERIA, SAMPLES
from lora_adapters import random_adapter

from commands.cli import main
from pipeline.backends import BackendConfig, Request, Sampling, generate_in_order
from pipeline.backends.lora import (
    ServedAdapter,
    adapted_modules,
    engine_lora_kwargs,
    lora_obstacle,
    serve_adapter,
    server_lora_args,
)

IMAGE = SAMPLES / "images" / "sample_001.jpg"


def ask(question="What is it?"):
    content = [{"type": "image"}, {"type": "text", "text": question}]
    return Request([{"role": "user", "content": content}], (IMAGE,), Sampling(max_tokens=6))


def test_the_engine_gets_the_rank_and_modules_of_the_adapters_it_serves():
    ours = {"r": 8, "target_modules": r"^model\.language_model\.(?:.*\.)?(q_proj|k_proj|v_proj)$"}
    assert adapted_modules(ours) == ("k_proj", "q_proj", "v_proj")
    assert adapted_modules({"target_modules": ["model.x.o_proj", "gate_proj"]}) == (
        "gate_proj", "o_proj",
    )  # fmt: skip
    assert adapted_modules({"target_modules": "all-linear"}) is None
    a = ServedAdapter("a", "/runs/a", "base", rank=8, modules=("q_proj", "v_proj"))
    b = ServedAdapter("b", "/runs/b", "base", rank=12, modules=("o_proj",))
    kwargs = engine_lora_kwargs([a, b])
    # vLLM offers ranks 1, 8, 16, ...: the smallest holding both; a slot for each adapter.
    assert kwargs == {"enable_lora": True, "max_lora_rank": 16, "max_loras": 2, "max_cpu_loras": 2,
                      "lora_target_modules": ["o_proj", "q_proj", "v_proj"]}  # fmt: skip
    # One adapter whose modules are unknown: no restriction, so nothing is left out.
    assert engine_lora_kwargs([a, ServedAdapter("c", "/c", "base", rank=8)])[
        "lora_target_modules"] is None  # fmt: skip
    merged = ServedAdapter("m", "/m", "base", model="/cache/m", reason="new vocabulary")
    assert engine_lora_kwargs([merged]) == {} and server_lora_args([merged]) == []
    args = server_lora_args([a, merged])
    assert args[:3] == ["--enable-lora", "--lora-modules", "a=/runs/a"]
    assert args[args.index("--max-lora-rank") + 1] == "8"


def test_what_a_lora_cannot_carry_is_named(tiny_model):
    llava = str(tiny_model("llava"))
    plain = {"peft_type": "LORA", "r": 8, "target_modules": ["q_proj"]}
    assert lora_obstacle(plain, {}, llava) is None
    assert "new vocabulary" in lora_obstacle(plain, {"reward_special_tokens": True}, llava)
    assert "new vocabulary" in lora_obstacle({**plain, "trainable_token_indices": [5]}, {}, llava)
    saved = lora_obstacle({**plain, "modules_to_save": ["lm_head"]}, {}, llava)
    assert "modules_to_save: lm_head" in saved
    onevision = lora_obstacle(plain, {}, str(tiny_model("llava-onevision")))
    assert "LlavaOnevisionForConditionalGeneration" in onevision


def test_an_adapter_vllm_cannot_apply_is_merged_once_into_a_content_keyed_folder(
    tiny_model, tmp_path
):
    from pipeline.backends.hf import HFBackend
    from pipeline.backends.trained import open_trained

    base = str(tiny_model("llava-onevision"))  # vLLM 0.32 has no LoRA for this family
    adapter = random_adapter(tiny_model("llava-onevision"), tmp_path / "a", seed=0)
    record = json.loads((adapter / "macaroon.json").read_text())
    served = serve_adapter(str(adapter), base, record)
    assert not served.as_lora and "merged once" in served.reason
    assert "vLLM serves no LoRA on LlavaOnevision" in served.line()
    weights = Path(served.model) / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    # Asked again: the same folder, not merged again.
    assert serve_adapter(str(adapter), base, record).model == served.model
    assert weights.stat().st_mtime_ns == stamp
    # Other weights in the same folder: another merge.
    shutil.rmtree(adapter)
    random_adapter(tiny_model("llava-onevision"), adapter, seed=1)
    assert serve_adapter(str(adapter), base, record).model != served.model
    # The merged weights answer as base + adapter do.
    shutil.rmtree(adapter)
    random_adapter(tiny_model("llava-onevision"), adapter, seed=0)
    cfg = BackendConfig(backend="hf", model=base)
    cfg.adapter = str(adapter)  # what AdapterConfig adds to a stage's config
    attached = open_trained(cfg, record)
    requests = [ask(), ask("Where is it?")]
    assert [c.text for c in generate_in_order(attached, requests)] == [
        c.text for c in generate_in_order(HFBackend(served.model), requests)
    ]


def test_serve_refuses_what_it_cannot_serve_before_starting(tiny_model, tmp_path, capsys):
    llava, qwen = tiny_model("llava"), tiny_model("qwen2-vl")
    adapter = random_adapter(llava, tmp_path / "crl", seed=0)
    assert main(["serve", str(qwen), "--adapter", f"crl={adapter}"]) == 2
    assert f"was trained on {llava}, not {qwen}" in capsys.readouterr().err
    assert main(["serve", "--adapter", f"a={adapter}", f"a={adapter}"]) == 2
    assert "every NAME must differ" in capsys.readouterr().err
    onevision = random_adapter(tiny_model("llava-onevision"), tmp_path / "ov", seed=0)
    other = random_adapter(tiny_model("llava-onevision"), tmp_path / "ov2", seed=1)
    assert main(["serve", "--adapter", f"ov={onevision}", f"b={other}"]) == 2
    assert "cannot be served beside other adapters" in capsys.readouterr().err


def test_imagination_from_a_crl_adapter_is_conditioned_and_keyed_by_it(
    tiny_model, sample_images, tmp_path
):
    from imagination.imagine import ImagineConfig, run_imagine
    from imagination.prompts import chat, load_templates, render
    from pipeline.adapters import conditioned
    from pipeline.backends.trained import open_trained
    from pipeline.criteria import load_criteria

    images = sample_images("sample_001.jpg")
    criteria = tmp_path / "criteria"  # one question type: six make no better test
    criteria.mkdir()
    shutil.copy(sorted(CRITERIA.glob("*.yaml"))[0], criteria)
    adapter = random_adapter(tiny_model("llava"), tmp_path / "adapter", seed=0, method="crl")
    record = json.loads((adapter / "macaroon.json").read_text())
    assert record["conditioning"] == "good"

    def imagine(out, **extra):
        cfg = ImagineConfig(images=str(images), out=str(tmp_path / out), criteria=str(criteria),
                            question_max_tokens=6, response_max_tokens=4, progress=False,
                            question_temperature=0.0, drop_truncated=False, **extra)  # fmt: skip
        return cfg, run_imagine(cfg)

    cfg, summary = imagine("crl", adapter=str(adapter))
    assert (summary["adapter"], summary["conditioning"]) == (str(adapter), "good")
    assert summary["model"] == f"{tiny_model('llava')}+{adapter}"
    questions = [json.loads(line) for line in (tmp_path / "crl" / "questions.jsonl").open()]
    # What the adapter says to the question prompt with `good` before it, and nothing else.
    qtype = load_criteria(cfg.criteria)[questions[0]["question_type"]]
    prompt = chat(render(load_templates(cfg.prompts)["question"], qtype))
    trained = open_trained(cfg, record)
    request = Request(prompt, (images / "sample_001.jpg",), Sampling(max_tokens=6))
    good = Request(conditioned(prompt, record), request.images, request.sampling)
    answers = [c.text for c in generate_in_order(trained, [good, request])]
    assert questions[0]["text"] == answers[0] != answers[1]
    # The base model's imagination shares no key with the adapter's; a rerun makes none.
    _, base = imagine("base", model=str(tiny_model("llava")))
    base_keys = {json.loads(line)["key"] for line in (tmp_path / "base" / "questions.jsonl").open()}
    assert base_keys.isdisjoint(q["key"] for q in questions)
    assert imagine("crl", adapter=str(adapter))[1]["model_calls"] == 0
    # Filtered by a judge: unless --judge_model says otherwise, the adapter's base judges.
    _, judged = imagine("crl", adapter=str(adapter), judge_filter=True, judge_backend="hf",
                        judge_max_tokens=4)  # fmt: skip
    (stage,) = [s for s in judged["stages"] if s["name"] == "judge"]
    assert stage["generated"] == 2 * judged["pairs"] and stage["failed"] == 0

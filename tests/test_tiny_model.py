"""Local random-weight VLMs: Hub layout, Auto-class loading, real batched generation."""

import json

import pytest
import torch
from safetensors import safe_open

from pipeline.cli import main
from pipeline.tiny_model import ARCHS

QUESTIONS = ["What colour is the mug?", "How many dogs are in the park today?"]


def chat(question):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def generate(model_dir, image, questions):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    texts = processor.apply_chat_template([chat(q) for q in questions], add_generation_prompt=True)
    inputs = processor(
        text=texts, images=[[image]] * len(questions), return_tensors="pt", padding=True
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    return out[:, inputs["input_ids"].shape[1] :].tolist()


@pytest.mark.parametrize("arch", ARCHS)
def test_loads_with_auto_classes_and_generates(tiny_model, sample_image, arch):
    folder = tiny_model(arch)
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"][0].endswith("ForConditionalGeneration")
    batched = generate(folder, sample_image, QUESTIONS)
    assert all(len(tokens) > 0 for tokens in batched)
    # Left padding must not change the answer: a batch gives what one at a time gives.
    one_by_one = [generate(folder, sample_image, [q])[0] for q in QUESTIONS]
    assert batched == one_by_one


def test_llava_vision_weights_use_the_hub_layout(tiny_model):
    with safe_open(tiny_model("llava") / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    vision = [k for k in keys if k.startswith("vision_tower.")]
    assert vision and all(k.startswith("vision_tower.vision_model.") for k in vision)
    assert any(k.startswith("language_model.") for k in keys)


def test_chat_template_marks_the_assistant_turn(tiny_model):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model("llava"))
    conversation = chat("Which mug?") + [
        {"role": "assistant", "content": [{"type": "text", "text": "Which one do you mean?"}]}
    ]
    out = processor.apply_chat_template(
        conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    ids, mask = (ids[0], mask[0]) if isinstance(ids[0], list) else (ids, mask)
    answer = processor.tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert answer.startswith(" Which one do you mean?")


def test_same_seed_same_weights(tmp_path):
    from pipeline.tiny_model import TinyModelConfig, build_tiny_model

    def weights(seed, name):
        folder = build_tiny_model(TinyModelConfig(out=str(tmp_path / name), seed=seed))
        with safe_open(folder / "model.safetensors", "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}

    a, b, c = weights(0, "a"), weights(0, "b"), weights(1, "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_cli_builds_and_reuses(tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["tiny-model", "--arch", "qwen2-vl", "--out", str(out)]) == 0
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert main(["tiny-model", "--arch", "qwen2-vl", "--out", str(out)]) == 0
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert main(["tiny-model", "--arch", "gpt-2", "--out", str(out)]) == 2
    assert "unknown; choose one of llava, llava-next, qwen2-vl" in capsys.readouterr().err

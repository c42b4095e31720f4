"""`macaroon tiny-model`: Hub layout, reproducible weights, reuse, and the families' data."""

import json

import pytest
import torch
from safetensors import safe_open

from commands.cli import main
from pipeline.families import FAMILIES_DIR, family
from pipeline.tiny_model import ARCHS

# What each family file must say, and cite.
REQUIRED = ("family", "published", "sources", "tokenizer", "chat_template", "generation_config",
            "processor", "model", "image_tokens", "language_model", "vllm",
            "published_renderings")  # fmt: skip
CITED = ("tokenizer", "chat_template", "generation_config", "processor", "config")


def test_every_family_has_its_facts_and_their_sources():
    assert set(ARCHS) >= {"llava", "llava-next", "qwen2-vl", "qwen2.5-vl", "llava-onevision",
                          "gemma3", "idefics3", "qwen3-vl", "internvl"}  # fmt: skip
    for arch in ARCHS:
        spec = family(arch)
        assert all(key in spec for key in REQUIRED), arch
        assert all(spec["sources"].get(key) for key in CITED), arch
        assert (FAMILIES_DIR / spec["chat_template"]).is_file(), arch
        assert spec["family"] == arch


@pytest.mark.parametrize("arch", ["llava", "llava-onevision", "gemma3"])
def test_vision_weights_use_the_published_layout(tiny_model, arch):
    with safe_open(tiny_model(arch) / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    vision = [k for k in keys if k.startswith("vision_tower.")]
    assert vision and all(k.startswith("vision_tower.vision_model.") for k in vision)
    assert any(k.startswith("language_model.") for k in keys)


def test_the_assistant_turn_is_marked_for_assistant_only_loss(tiny_model):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model("qwen2-vl"))
    conversation = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which mug?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Which one do you mean?"}]},
    ]
    out = processor.apply_chat_template(
        conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    ids, mask = (ids[0], mask[0]) if isinstance(ids[0], list) else (ids, mask)
    answer = processor.tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert answer == "Which one do you mean?<|im_end|>"


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
    argv = ["tiny-model", "--arch", "qwen2-vl", "--images", "reduced", "--out", str(out)]
    assert main(argv) == 0
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert main(argv) == 0
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt
    processor = json.loads((out / "processor_config.json").read_text())
    assert processor["image_processor"]["size"]["longest_edge"] == 3136  # reduced: 4 tokens
    assert main(["tiny-model", "--arch", "gpt-2", "--out", str(out)]) == 2
    assert "unknown; choose one of gemma3, idefics3, internvl, llava" in capsys.readouterr().err

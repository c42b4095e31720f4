"""Build small random-weight VLMs locally, saved as the Hub publishes checkpoints.

Nothing can be downloaded here, so tests and the demo run on models built from scratch:
a byte-level BPE tokenizer trained on the project's own text, the family's processor and
chat template, and the family's model class from a shrunk config. The folder loads with
`AutoModelForImageTextToText` / `AutoProcessor`, trains under TRL and loads in vLLM.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline import DEFAULT_CRITERIA_DIR, DEFAULT_SAMPLES_DIR

ARCHS = ("llava", "llava-next", "qwen2-vl")
SIZES = ("tiny", "small")

# Text tower per size. head_dim 32/64: sizes the vLLM CPU attention kernels support.
TEXT = {
    "tiny": dict(vocab=1024, hidden=64, layers=2, heads=2, kv_heads=1, mlp=128),
    "small": dict(vocab=4096, hidden=256, layers=4, heads=4, kv_heads=2, mlp=512),
}
# Vision tower per size: CLIP for the LLaVA family, Qwen2-VL's own ViT otherwise.
VISION = {
    "tiny": dict(hidden=32, layers=2, heads=2, mlp=64, image=32, patch=8),
    "small": dict(hidden=64, layers=2, heads=2, mlp=128, image=64, patch=16),
}
# Special tokens per family, in the order they get ids 0..n-1.
SPECIAL_TOKENS = {
    "llava": ["<unk>", "<s>", "</s>", "<pad>", "<image>"],
    "qwen2-vl": [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ],
}
SPECIAL_TOKENS["llava-next"] = SPECIAL_TOKENS["llava"]
TEMPLATES = Path(__file__).with_name("chat_templates")


@dataclass
class TinyModelConfig:
    """`macaroon tiny-model`: build a random-weight VLM for tests and the demo."""

    arch: str = field(default="llava", metadata={"help": f"Model family: {', '.join(ARCHS)}."})
    size: str = field(
        default="tiny",
        metadata={"help": "tiny: builds in seconds, for tests; small: learns templates on CPU."},
    )
    out: str | None = field(
        default=None, metadata={"help": "Output folder (default: outputs/models/ARCH-SIZE)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed for the random weights."})
    criteria_dir: str = field(
        default=str(DEFAULT_CRITERIA_DIR),
        metadata={"help": "Criteria YAML folder, part of the tokenizer's training text."},
    )
    samples_dir: str = field(
        default=str(DEFAULT_SAMPLES_DIR),
        metadata={"help": "Samples folder (*.json, *.jsonl), part of the tokenizer's text."},
    )
    force: bool = field(default=False, metadata={"help": "Rebuild even if OUT holds a model."})

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"--arch {self.arch!r}: unknown; choose one of {', '.join(ARCHS)}")
        if self.size not in SIZES:
            raise ValueError(f"--size {self.size!r}: unknown; choose one of {', '.join(SIZES)}")
        if self.out is None:
            self.out = f"outputs/models/{self.arch}-{self.size}"


def build_tiny_model(cfg: TinyModelConfig) -> Path:
    """Build (or reuse) the model described by `cfg`; returns its folder."""
    out = Path(cfg.out)
    marker = out / "tiny_model.json"
    wanted = {"arch": cfg.arch, "size": cfg.size, "seed": cfg.seed}
    if not cfg.force and marker.exists() and json.loads(marker.read_text()) == wanted:
        return out
    import torch

    torch.manual_seed(cfg.seed)
    tokenizer = train_tokenizer(cfg.arch, TEXT[cfg.size]["vocab"], corpus(cfg))
    processor = BUILDERS[cfg.arch][0](tokenizer, cfg.size)
    model = BUILDERS[cfg.arch][1](tokenizer, cfg.size)
    _set_generation_ids(model, tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    if cfg.arch in ("llava", "llava-next"):
        _to_hub_vision_layout(out)
    marker.write_text(json.dumps(wanted))
    return out


def corpus(cfg: TinyModelConfig) -> list[str]:
    """Every string in the criteria and sample files: the words the pipeline will use."""
    texts: list[str] = []
    for path in sorted(Path(cfg.criteria_dir).glob("*.y*ml")):
        texts += _strings(yaml.safe_load(path.read_text(encoding="utf-8")))
    for path in sorted(Path(cfg.samples_dir).glob("*.json*")):
        raw = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            texts += _strings([json.loads(line) for line in raw.splitlines() if line.strip()])
        else:
            texts += _strings(json.loads(raw))
    # The chat-template words and the reward tokens must be cheap to encode.
    texts += ["USER: ASSISTANT: [INST] [/INST] good bad system user assistant"] * 50
    return texts


def _strings(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in _strings(k) + _strings(v)]
    if isinstance(node, list):
        return [s for item in node for s in _strings(item)]
    return []


def train_tokenizer(arch: str, vocab_size: int, texts: list[str]):
    """A byte-level BPE tokenizer (any text encodes) with the family's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = SPECIAL_TOKENS[arch]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if arch == "qwen2-vl":
        names = dict(eos_token="<|im_end|>", pad_token="<|endoftext|>")
    else:
        names = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    # Chat templates write the special tokens themselves, so nothing is added on encode.
    return PreTrainedTokenizerFast(tokenizer_object=tok, padding_side="left", **names)


def _template(name: str) -> str:
    return (TEMPLATES / f"{name}.jinja").read_text()


def _llama_config(tokenizer, size: str, cls_name: str = "LlamaConfig"):
    import transformers

    return getattr(transformers, cls_name)(
        **_text_tower(tokenizer, size),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def _text_tower(tokenizer, size: str) -> dict:
    t = TEXT[size]
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=t["hidden"],
        intermediate_size=t["mlp"],
        num_hidden_layers=t["layers"],
        num_attention_heads=t["heads"],
        num_key_value_heads=t["kv_heads"],
        max_position_embeddings=2048,
    )


def _clip_config(size: str):
    from transformers import CLIPVisionConfig

    v = VISION[size]
    return CLIPVisionConfig(
        hidden_size=v["hidden"],
        intermediate_size=v["mlp"],
        num_hidden_layers=v["layers"],
        num_attention_heads=v["heads"],
        image_size=v["image"],
        patch_size=v["patch"],
        projection_dim=v["hidden"],
    )


def _clip_image_processor(size: str, cls_name: str = "CLIPImageProcessor", **extra):
    import transformers

    side = VISION[size]["image"]
    return getattr(transformers, cls_name)(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}, **extra
    )


def _llava_processor(tokenizer, size: str):
    from transformers import LlavaProcessor

    return LlavaProcessor(
        image_processor=_clip_image_processor(size),
        tokenizer=tokenizer,
        patch_size=VISION[size]["patch"],
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        chat_template=_template("llava"),
    )


def _llava_model(tokenizer, size: str):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    v = VISION[size]
    config = LlavaConfig(
        vision_config=_clip_config(size),
        text_config=_llama_config(tokenizer, size),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=(v["image"] // v["patch"]) ** 2,
        tie_word_embeddings=False,
    )
    return LlavaForConditionalGeneration(config)


def _grid_pinpoints(size: str) -> list[list[int]]:
    side = VISION[size]["image"]
    return [[side, side], [side, 2 * side], [2 * side, side], [2 * side, 2 * side]]


def _llava_next_processor(tokenizer, size: str):
    from transformers import LlavaNextProcessor

    image_processor = _clip_image_processor(
        size, "LlavaNextImageProcessor", image_grid_pinpoints=_grid_pinpoints(size)
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=VISION[size]["patch"],
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=_template("llava_next"),
    )


def _llava_next_model(tokenizer, size: str):
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    config = LlavaNextConfig(
        vision_config=_clip_config(size),
        text_config=_llama_config(tokenizer, size, "MistralConfig"),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=_grid_pinpoints(size),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    return LlavaNextForConditionalGeneration(config)


QWEN_SIDE = 56  # every image becomes 56x56 pixels: 4x4 patches of 14, merged 2x2 into 4 tokens


def _qwen2_vl_processor(tokenizer, size: str):
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    pixels = {"shortest_edge": QWEN_SIDE * QWEN_SIDE, "longest_edge": QWEN_SIDE * QWEN_SIDE}
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=pixels),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(size=pixels),
        chat_template=_template("qwen2_vl"),
    )


def _qwen2_vl_model(tokenizer, size: str):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    t, v = TEXT[size], VISION[size]
    head_dim = t["hidden"] // t["heads"]
    text = dict(
        **_text_tower(tokenizer, size),
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": _mrope(head_dim),
        },
        bos_token_id=tokenizer.pad_token_id,  # Qwen's <|endoftext|> serves as both
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    vision = dict(
        depth=v["layers"],
        embed_dim=v["hidden"],
        hidden_size=t["hidden"],
        num_heads=v["heads"],
        mlp_ratio=2,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return Qwen2VLForConditionalGeneration(config)


def _mrope(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over time, height, width as Qwen2-VL does (1:1.5:1.5)."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


BUILDERS = {
    "llava": (_llava_processor, _llava_model),
    "llava-next": (_llava_next_processor, _llava_next_model),
    "qwen2-vl": (_qwen2_vl_processor, _qwen2_vl_model),
}


def _set_generation_ids(model, tokenizer) -> None:
    gen = model.generation_config
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None:
        gen.bos_token_id = tokenizer.bos_token_id


def _to_hub_vision_layout(folder: Path) -> None:
    """Rename `vision_tower.*` to `vision_tower.vision_model.*`, the layout of llava-hf checkpoints.

    transformers 5 saves the CLIP tower without its `vision_model` prefix; it loads either
    layout, but vLLM reads only the Hub's.
    """
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(path)
    renamed = {
        ("vision_tower.vision_model." + k[len("vision_tower.") :])
        if k.startswith("vision_tower.") and not k.startswith("vision_tower.vision_model.")
        else k: v
        for k, v in tensors.items()
    }
    tmp = path.with_suffix(".tmp")
    save_file(renamed, tmp, metadata={"format": "pt"})
    os.replace(tmp, path)

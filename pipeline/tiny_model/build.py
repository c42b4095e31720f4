"""Assemble a family's tokenizer, processor, config and random weights, and save them."""

from __future__ import annotations

import copy
import os
from functools import cache
from pathlib import Path

import yaml

from pipeline.families import chat_template
from pipeline.tiny_model.tokenizer import build_tokenizer

SIZES_FILE = Path(__file__).with_name("sizes.yaml")
ID_KEYS = ("_id", "_index", "_ids")  # config keys whose token names become token ids


@cache
def _sizes() -> dict:
    return yaml.safe_load(SIZES_FILE.read_text(encoding="utf-8"))


def sizes() -> dict:
    """Widths and depths per size (sizes.yaml): the only things a build shrinks."""
    return copy.deepcopy(_sizes())


def resolve(value, tokenizer, dims: dict, key: str = ""):
    """Fill a family value in: token names -> ids, "=text.hidden"-style sizes, scaled lists,
    `{grid, max}` pinpoint grids."""
    if isinstance(value, dict):
        if set(value) == {"scaled"}:
            return _scaled(value["scaled"], dims["text.head_dim"] // 2)
        if set(value) == {"grid", "max"}:
            side, top = value["grid"], value["max"]
            return [[side * a, side * b] for a in range(1, top + 1) for b in range(1, top + 1)]
        return {k: resolve(v, tokenizer, dims, k) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, tokenizer, dims, key) for v in value]
    if isinstance(value, str) and value.startswith("="):
        return dims[value[1:]]
    if isinstance(value, str) and key.endswith(ID_KEYS):
        token_id = tokenizer.convert_tokens_to_ids(value)
        if token_id is None or token_id == tokenizer.unk_token_id and value != tokenizer.unk_token:
            raise ValueError(f"{key}: token {value!r} is not in the tokenizer")
        return token_id
    return value


def _scaled(published: list[int], total: int) -> list[int]:
    """A rotary split (mrope_section) in the published proportions, summing to `total`."""
    parts = [max(1, round(p * total / sum(published))) for p in published]
    parts[0] += total - sum(parts)
    return parts


def dimensions(size: str, tokenizer) -> dict:
    table = sizes()[size]
    text, vision = table["text"], table["vision"]
    return {
        **{f"text.{k}": v for k, v in text.items()},
        **{f"vision.{k}": v for k, v in vision.items()},
        "text.head_dim": text["hidden"] // text["heads"],
        "text.vocab": len(tokenizer),
    }


def tower(values: dict, dims: dict, prefix: str, keys: dict) -> dict:
    """A sub-config: the family's published facts with this size's widths and depths."""
    out = {keys[name]: dims[f"{prefix}.{name}"] for name in keys}
    if prefix == "text":
        out |= {"head_dim": dims["text.head_dim"], "vocab_size": dims["text.vocab"]}
    return out | values


def vision_keys(vision_config: dict, model_type: str) -> dict:
    table = sizes()["vision_keys"]
    return table.get(vision_config.get("model_type") or model_type, table["standard"])


def build_processor(spec: dict, tokenizer):
    import transformers

    p = spec["processor"]
    parts = {"image_processor": _instance(p["image_processor"], tokenizer)}
    if "video_processor" in p:
        parts["video_processor"] = _instance(p["video_processor"], tokenizer)
    kwargs = resolve(p.get("kwargs", {}), tokenizer, {})
    return getattr(transformers, p["class"])(
        tokenizer=tokenizer, chat_template=chat_template(spec), **parts, **kwargs
    )


def _instance(part: dict, tokenizer):
    import transformers

    return getattr(transformers, part["class"])(**resolve(part.get("kwargs", {}), tokenizer, {}))


def build_model(spec: dict, size: str, tokenizer):
    import transformers

    m = spec["model"]
    dims = dimensions(size, tokenizer)
    config_cls = getattr(transformers, m["config"])
    model_type = getattr(config_cls, "model_type", "")
    text = tower(resolve(m["text_config"], tokenizer, dims), dims, "text", sizes()["text_keys"])
    vision_values = resolve(m["vision_config"], tokenizer, dims)
    vision = tower(vision_values, dims, "vision", vision_keys(vision_values, model_type))
    config = config_cls(
        text_config=text, vision_config=vision, **resolve(m["kwargs"], tokenizer, dims)
    )
    return getattr(transformers, m["class"])(config)


def generation_config(spec: dict, tokenizer):
    from transformers import GenerationConfig

    return GenerationConfig(**resolve(spec["generation_config"], tokenizer, {}))


def save(spec: dict, size: str, texts: list[str], out: Path) -> None:
    """Build everything for `spec` (image settings already applied) and save it in `out`."""
    tokenizer = build_tokenizer(spec["tokenizer"], sizes()[size]["vocab"], texts)
    processor = build_processor(spec, tokenizer)
    model = build_model(spec, size, tokenizer)
    model.generation_config = generation_config(spec, tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    if spec["model"].get("hub_layout"):
        _rename_weights(out, spec["model"]["hub_layout"])


def _rename_weights(folder: Path, prefixes: dict[str, str]) -> None:
    """Rename weight prefixes to the published checkpoint's layout.

    transformers 5 saves the CLIP/SigLIP tower as `vision_tower.*`; llava-hf checkpoints use
    `vision_tower.vision_model.*`. transformers loads either; vLLM reads only the Hub's.
    """
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(path)
    renamed = {}
    for key, tensor in tensors.items():
        for old, new in prefixes.items():
            if key.startswith(old) and not key.startswith(new):
                key = new + key[len(old) :]
        renamed[key] = tensor
    tmp = path.with_suffix(".tmp")
    save_file(renamed, tmp, metadata={"format": "pt"})
    os.replace(tmp, path)

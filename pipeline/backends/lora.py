"""Trained models on vLLM: a PEFT adapter served as a LoRA where vLLM can, merged once where not.

vLLM applies our adapters as saved (they adapt the language model only, with a target
regex vLLM reads): `LLM(enable_lora=True, max_lora_rank=R)` and a `LoRARequest` per
adapter, the base weights loaded once for any number of adapters. Some adapters it cannot
apply: new vocabulary (`--reward_special_tokens` trains embedding rows of tokens the base
lacks), full-module saves (`modules_to_save`), families whose vLLM model has no LoRA
support. Those are merged into the base once, into a folder keyed by the base's and the
adapter's content, and served as a model of their own; one printed line says which and why.
Full weights (`--use_peft false`, `--train_last_layers`) are a model already. Nothing here
falls back to the hf backend.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.families import family_of
from pipeline.fingerprint import cache_dir, folder_hash, model_identity


def is_adapter(folder: str | Path) -> bool:
    """A PEFT adapter folder (else full weights: --use_peft false, --train_last_layers)."""
    return (Path(folder) / "adapter_config.json").is_file()


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks
MERGE_FORMAT = 1  # part of a merged folder's key: bump when merging changes


@dataclass(frozen=True)
class ServedAdapter:
    """How vLLM runs one trained folder: as a LoRA on `base`, or as the model `model`."""

    name: str  # the LoRA's name (a served adapter's model name)
    adapter: str  # the trained folder
    base: str
    revision: str | None = None
    rank: int | None = None  # the adapter's largest LoRA rank
    modules: tuple[str, ...] | None = None  # module names it adapts (None: unknown)
    model: str | None = None  # set: the folder vLLM loads instead (merged or full weights)
    reason: str | None = None  # why it is not a LoRA

    @property
    def as_lora(self) -> bool:
        return self.model is None

    def line(self) -> str:
        """The one line that says how this adapter is served when it is not a LoRA."""
        return f"adapter {self.adapter}: {self.reason}; vLLM serves {self.model}"


def adapter_name(adapter: str) -> str:
    """A served name for `adapter`: its folder's name (a checkpoint-N with its run's)."""
    path = Path(adapter.rstrip("/"))
    name = f"{path.parent.name}-{path.name}" if path.name.startswith("checkpoint-") else path.name
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


def serve_adapter(
    adapter: str,
    base: str,
    record: dict | None,
    revision: str | None = None,
    name: str | None = None,
    trust_remote_code: bool = False,
) -> ServedAdapter:
    """How vLLM runs `adapter` (trained on `base`): merges it first where it must."""
    name = name or adapter_name(adapter)
    if not is_adapter(adapter):
        reason = "full weights (--use_peft false or --train_last_layers), not a LoRA"
        return ServedAdapter(name, adapter, base, revision, model=adapter, reason=reason)
    config = json.loads((Path(adapter) / "adapter_config.json").read_text())
    common = dict(name=name, adapter=adapter, base=base, revision=revision)
    reason = lora_obstacle(config, record, base, revision, trust_remote_code)
    if reason:
        merged = merge_adapter(adapter, base, record, revision, trust_remote_code)
        return ServedAdapter(**common, model=str(merged), reason=f"{reason}: merged once")
    return ServedAdapter(**common, rank=lora_rank(config), modules=adapted_modules(config))


def lora_obstacle(
    config: dict,
    record: dict | None,
    base: str,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> str | None:
    """Why vLLM cannot apply this adapter (its adapter_config.json) as a LoRA, or None."""
    if (record or {}).get("reward_special_tokens") or config.get("trainable_token_indices"):
        return "new vocabulary (--reward_special_tokens), which vLLM's LoRA cannot add"
    if config.get("modules_to_save"):
        saved = ", ".join(config["modules_to_save"])
        return f"full-module saves (modules_to_save: {saved}), which vLLM's LoRA cannot load"
    if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora"):
        return f"a {config.get('peft_type')} adapter{' (DoRA)' * bool(config.get('use_dora'))}"
    if lora_rank(config) > VLLM_LORA_RANKS[-1]:
        return f"rank {lora_rank(config)}, over vLLM's largest ({VLLM_LORA_RANKS[-1]})"
    from transformers import AutoConfig

    model_config = AutoConfig.from_pretrained(
        base, revision=revision, trust_remote_code=trust_remote_code
    )
    facts = (family_of(model_config.model_type) or {}).get("vllm") or {}
    if facts.get("lora") is False:
        architecture = (model_config.architectures or [model_config.model_type])[0]
        return f"vLLM serves no LoRA on {architecture} ({facts.get('note', 'its family file')})"
    return None


def lora_rank(config: dict) -> int:
    return max([config.get("r") or 0, *(config.get("rank_pattern") or {}).values()])


def adapted_modules(config: dict) -> tuple[str, ...] | None:
    """The module names the adapter adapts, from its target_modules; None when unsure.

    Our trainers save a regex ending in `(q_proj|k_proj|v_proj)$` (pipeline's
    language_model_targets); PEFT also saves lists of names.
    """
    targets = config.get("target_modules")
    if isinstance(targets, list) and targets:
        return tuple(sorted({t.split(".")[-1] for t in targets}))
    if isinstance(targets, str):
        if re.fullmatch(r"\w+", targets) and targets != "all-linear":
            return (targets,)
        match = re.search(r"\(((?:\w+\|)*\w+)\)\$?$", targets)
        if match:
            return tuple(sorted(set(match.group(1).split("|"))))
    return None


def engine_lora_kwargs(adapters: Sequence[ServedAdapter]) -> dict:
    """`vllm.LLM` settings for serving `adapters` (the LoRA ones) together on one engine.

    The smallest rank vLLM offers that holds every adapter, a slot for each, and only the
    modules they adapt (vLLM maps q/k/v to its fused qkv); every module where any adapter's
    targets are unknown.
    """
    loras = [a for a in adapters if a.as_lora]
    if not loras:
        return {}
    rank = max(a.rank or 1 for a in loras)
    modules = None
    if all(a.modules for a in loras):
        modules = sorted({m for a in loras for m in a.modules})
    return {
        "enable_lora": True,
        "max_lora_rank": next(r for r in VLLM_LORA_RANKS if r >= rank),
        "max_loras": len(loras),
        "max_cpu_loras": len(loras),
        "lora_target_modules": modules,
    }


def server_lora_args(adapters: Sequence[ServedAdapter]) -> list[str]:
    """The same settings as vLLM OpenAI server flags, with `--lora-modules NAME=DIR`."""
    kwargs = engine_lora_kwargs(adapters)
    if not kwargs:
        return []
    args = ["--enable-lora", "--lora-modules"]
    args += [f"{a.name}={Path(a.adapter).resolve()}" for a in adapters if a.as_lora]
    args += ["--max-lora-rank", str(kwargs["max_lora_rank"])]
    args += ["--max-loras", str(kwargs["max_loras"]), "--max-cpu-loras", str(kwargs["max_loras"])]
    if kwargs["lora_target_modules"]:
        args += ["--lora-target-modules", *kwargs["lora_target_modules"]]
    return args


def merged_folder(adapter: str, base: str, revision: str | None = None) -> Path:
    """Where the merge of `adapter` into `base` lives: keyed by both contents, not names."""
    key = json.dumps(
        {"base": model_identity(base, revision), "adapter": folder_hash(adapter),
         "format": MERGE_FORMAT}, sort_keys=True,
    )  # fmt: skip
    return cache_dir() / "merged" / hashlib.sha256(key.encode()).hexdigest()[:24]


def merge_adapter(
    adapter: str,
    base: str,
    record: dict | None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> Path:
    """`adapter` merged into `base`, saved once (safetensors, processor, generation config)
    in its content-keyed folder; later calls find it there."""
    folder = merged_folder(adapter, base, revision)
    if (folder / "config.json").is_file():
        return folder
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    common = dict(revision=revision, trust_remote_code=trust_remote_code)
    special = bool((record or {}).get("reward_special_tokens"))
    # An adapter with new reward tokens saved its tokenizer; the base gets rows for them.
    processor = AutoProcessor.from_pretrained(adapter, trust_remote_code=trust_remote_code) if (
        special) else AutoProcessor.from_pretrained(base, **common)  # fmt: skip
    model = AutoModelForImageTextToText.from_pretrained(base, dtype="auto", **common)
    if special:
        model.resize_token_embeddings(len(processor.tokenizer))
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    # Written beside and renamed into place: a killed merge never leaves a half folder.
    partial = folder.with_name(f"{folder.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    with torch.no_grad():
        merged.save_pretrained(partial, safe_serialization=True)
    processor.save_pretrained(partial)
    (partial / "merged_from.json").write_text(
        json.dumps({"base": base, "revision": revision, "adapter": str(adapter)}, indent=2)
    )
    try:
        os.rename(partial, folder)
    except OSError:  # another process merged it meanwhile: the same content
        shutil.rmtree(partial, ignore_errors=True)
    return folder

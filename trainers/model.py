"""Model, processor and LoRA for training and inference."""

from __future__ import annotations

import re

from peft import LoraConfig

from pipeline.families import family_of
from pipeline.families.image_tokens import processor_kwargs
from pipeline.model_source import model_errors


def load_model_and_processor(
    model_args, trust_remote_code: bool = False, max_image_tokens: int | None = None
):
    """`AutoModelForImageTextToText` + `AutoProcessor` from TRL's `ModelConfig` fields.

    The processor gets the same image-token cap as the backends (pipeline/families/image_tokens.py).
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    dtype = model_args.dtype
    if dtype in (None, "auto"):  # bf16 on GPUs; exact float32 on CPU, where bf16 is no faster
        dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    common = dict(revision=model_args.model_revision, trust_remote_code=trust_remote_code)
    name = model_args.model_name_or_path
    with model_errors(name, "--model_name_or_path"):  # named as missing, not as a disk error
        limits = processor_kwargs(name, max_image_tokens, model_args.model_revision)
        processor = AutoProcessor.from_pretrained(name, **common, **limits)
        model = AutoModelForImageTextToText.from_pretrained(
            name,
            dtype=getattr(torch, dtype),
            attn_implementation=model_args.attn_implementation,
            **common,
        )
    return model, processor


# Where the language model sits when the family is not one we know (transformers 5 names).
GENERIC_LANGUAGE_MODEL = r"(?:model\.)?(?:language_model|text_model)\."


def language_model_targets(modules: list[str], model_type: str | None = None) -> str:
    """A PEFT target regex for `modules` inside the language model only, not the vision tower.

    The vision towers have `q_proj`/`k_proj`/`v_proj` too (CLIP, SigLIP, InternViT), so
    names alone would adapt the vision encoder; the paper adapted the language model only.
    Where the language model sits is a family fact (`language_model` in the family file:
    SmolVLM's is `model.text_model`).
    """
    names = "|".join(re.escape(m) for m in modules)
    prefix = (family_of(model_type) or {}).get("language_model", GENERIC_LANGUAGE_MODEL)
    return rf"^{prefix}(?:.*\.)?({names})$"


def train_only_last_layers(model, count: int) -> list[str]:
    """Freeze every parameter except those of the language model's last `count` decoder layers.

    The original MACAROON DPO (train/train_dpo.py) fully trained the last 10 decoder layers
    of the language model and froze the rest (vision tower, projector, embeddings, earlier
    layers, final norm, LM head). The language model is the module at the family's
    `language_model` prefix (SmolVLM's is `model.text_model`); its decoder layers are the
    list inside it with as many entries as the text config has layers. Returns the names of
    the parameters left trainable.
    """
    from torch import nn

    prefix = (family_of(model.config.model_type) or {}).get(
        "language_model", GENERIC_LANGUAGE_MODEL
    )
    found = [(n, m) for n, m in model.named_modules() if n and re.fullmatch(prefix, n + ".")]
    if len(found) != 1:
        raise ValueError(
            f"{type(model).__name__}: no single language model module matches {prefix!r} "
            f"(found {', '.join(n for n, _ in found) or 'none'}); --train_last_layers needs it"
        )
    language_name, language = found[0]
    total = text_layers(model.config)
    if count > total:
        raise ValueError(f"--train_last_layers {count}: the language model has {total} layers")
    stacks = [
        (n, m)
        for n, m in language.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) == total
    ]
    # The decoder layers are the outermost such list, not one nested inside a layer.
    depth = min((n.count(".") for n, _ in stacks), default=None)
    stacks = [(n, m) for n, m in stacks if n.count(".") == depth]
    if len(stacks) != 1:
        names = ", ".join(n for n, _ in stacks) or "none"
        raise ValueError(
            f"{type(model).__name__}: cannot tell which list of {total} modules in "
            f"{language_name} holds the decoder layers ({names})"
        )
    stack_name, layers = stacks[0]
    model.requires_grad_(False)
    trainable = []
    for index in range(total - count, total):
        layers[index].requires_grad_(True)
        where = f"{language_name}.{stack_name}.{index}"
        trainable += [f"{where}.{name}" for name, _ in layers[index].named_parameters()]
    return trainable


def text_layers(config) -> int:
    """Decoder layers of the language model, from the text part of a VLM's config."""
    return config.get_text_config().num_hidden_layers


def lora_config(
    model_args, trainable_token_ids: list[int] | None = None, model_type: str | None = None
) -> LoraConfig:
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=language_model_targets(
            model_args.lora_target_modules or ["q_proj", "k_proj", "v_proj"], model_type
        ),
        modules_to_save=model_args.lora_modules_to_save,
        bias="none",
        # New reward tokens: only their embedding rows train, not the whole matrix.
        trainable_token_indices=trainable_token_ids or None,
    )


def add_reward_tokens(model, processor, tokens: list[str]) -> list[int]:
    """Add `tokens` to the vocabulary (as special tokens) and make room in the embeddings."""
    tokenizer = processor.tokenizer
    tokenizer.add_tokens(tokens, special_tokens=True)
    model.resize_token_embeddings(len(tokenizer))
    return tokenizer.convert_tokens_to_ids(tokens)


def fsdp_layer_classes(model) -> list[str]:
    """The model's `_no_split_modules` that it contains: the layers FSDP shards one by one.

    With `fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP` and no class named in the launch
    config, accelerate takes `_no_split_modules` as they stand and refuses any it cannot
    find. LLaVA, LLaVA-NeXT, LLaVA-OneVision and Gemma 3 list there the text side of their
    vision tower's family (`CLIPTextEmbeddings`, `SiglipTextEmbeddings`), which these models
    never build, so FSDP would stop before the first step.
    """
    from accelerate.utils.dataclasses import get_module_class_from_name

    names = getattr(model, "_no_split_modules", None) or []
    return sorted(name for name in names if get_module_class_from_name(model, name) is not None)


def name_fsdp_layers(accelerator, model) -> None:
    """Under FSDP, wrap `model` layer by layer, unless the launch config named the classes.

    One launch config serves every family this way; accelerate reads the names when it
    prepares the model, so this must run before `trainer.train()`.
    """
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is not None and plugin.transformer_cls_names_to_wrap is None:
        plugin.transformer_cls_names_to_wrap = fsdp_layer_classes(model)

"""Model, processor and LoRA for training and inference."""

from __future__ import annotations

import re

from peft import LoraConfig


def load_model_and_processor(model_args, trust_remote_code: bool = False):
    """`AutoModelForImageTextToText` + `AutoProcessor` from TRL's `ModelConfig` fields."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    dtype = model_args.dtype
    if dtype in (None, "auto"):  # bf16 on GPUs; exact float32 on CPU, where bf16 is no faster
        dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    common = dict(revision=model_args.model_revision, trust_remote_code=trust_remote_code)
    processor = AutoProcessor.from_pretrained(model_args.model_name_or_path, **common)
    model = AutoModelForImageTextToText.from_pretrained(
        model_args.model_name_or_path,
        dtype=getattr(torch, dtype),
        attn_implementation=model_args.attn_implementation,
        **common,
    )
    return model, processor


def language_model_targets(modules: list[str]) -> str:
    """A PEFT target regex for `modules` inside the language model only, not the vision tower.

    Both towers have `q_proj`/`k_proj`/`v_proj` in LLaVA (CLIP), so names alone would
    adapt the vision encoder too; the paper adapted the language model only.
    """
    names = "|".join(re.escape(m) for m in modules)
    return rf".*language_model.*\.({names})$"


def lora_config(model_args, trainable_token_ids: list[int] | None = None) -> LoraConfig:
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=language_model_targets(
            model_args.lora_target_modules or ["q_proj", "k_proj", "v_proj"]
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

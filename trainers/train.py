"""`macaroon train`: one entry for every METHOD, on TRL's SFTTrainer and DPOTrainer.

Everything that can go wrong with the inputs is checked before the model is loaded.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from datasets import Dataset, DatasetDict
from pipeline.chat import stop_token_ids
from pipeline.formats import REWARDS
from trainers.collator import PreferenceCollator, PromptCompletionCollator
from trainers.config import METHODS, RECORD_FILE, MacaroonTrainConfig
from trainers.data import (
    DataError,
    as_prompt_completion,
    check_images,
    drop_provenance,
    load_dataset_dict,
    mix,
    select,
)
from trainers.model import (
    add_reward_tokens,
    load_model_and_processor,
    lora_config,
    name_fsdp_layers,
)


def prepare_data(
    cfg: MacaroonTrainConfig, seed: int, general: DatasetDict | None = None
) -> Dataset:
    """The training rows for `cfg.method`: checked, converted and mixed."""
    config = METHODS[cfg.method][0]
    preference = select(load_dataset_dict(cfg.data), config, cfg.data)
    general_rows = None
    if cfg.general or general is not None:
        general = general if general is not None else load_dataset_dict(cfg.general)
        general_rows = select(general, config, cfg.general or "general data")
    if cfg.check_images:
        check_images(preference, f"{cfg.data} ({config})")
        if general_rows is not None:
            check_images(general_rows, f"{cfg.general} ({config})")
    rows = mix(
        drop_provenance(preference), _maybe(drop_provenance, general_rows), cfg.general_ratio, seed
    )
    return rows if config == "dpo" else as_prompt_completion(rows)


def reward_map(cfg: MacaroonTrainConfig) -> dict[str, str]:
    """Dataset reward value -> the token that conditions it (`good` -> preferred).

    With `--reward_special_tokens`, the inserted token is a new vocabulary entry spelled
    `<|good|>`: a special token spelled `good` would also swallow the user's own "good" (in
    "goodbye", "a good day") and vanish from it on decoding.
    """
    tokens = cfg.reward_tokens
    if cfg.reward_special_tokens:
        tokens = [special_spelling(t) for t in tokens]
    return dict(zip(REWARDS, tokens, strict=True))


def special_spelling(token: str) -> str:
    return token if token.startswith("<|") and token.endswith("|>") else f"<|{token}|>"


def _maybe(fn, value):
    return None if value is None else fn(value)


def check_start(cfg: MacaroonTrainConfig) -> None:
    if cfg.method == "sft_after_multiturn":
        adapter = Path(cfg.multiturn_adapter or "")
        record = adapter / RECORD_FILE
        if not cfg.multiturn_adapter or not record.is_file():
            raise DataError(
                f"sft_after_multiturn starts from a multiturn adapter: --multiturn_adapter "
                f"{cfg.multiturn_adapter or '(unset)'} holds no {RECORD_FILE}; train "
                "`make train METHOD=multiturn` first and pass its OUT"
            )
        method = json.loads(record.read_text()).get("method")
        if method != "multiturn":
            raise DataError(f"{adapter}: was trained with METHOD={method}, not multiturn")


def run_train(
    cfg: MacaroonTrainConfig, model_args, args, general: DatasetDict | None = None
) -> Path:
    """Train, save the adapter (safetensors) and its record; returns the output folder."""
    train(cfg, model_args, args, general)
    return Path(args.output_dir)


def train(cfg: MacaroonTrainConfig, model_args, args, general: DatasetDict | None = None):
    """`run_train`, returning the TRL trainer (its model and state) after saving."""
    import torch

    check_start(cfg)
    train_dataset = prepare_data(cfg, args.seed, general)
    if not torch.cuda.is_available():
        args.bf16 = (
            False  # no mixed-precision gain on CPU, and exact float32 learns the tiny models
        )
    model, processor = load_model_and_processor(
        model_args, args.trust_remote_code, cfg.max_image_tokens
    )
    token_ids = None
    if cfg.method == "crl" and cfg.reward_special_tokens:
        token_ids = add_reward_tokens(model, processor, list(reward_map(cfg).values()))
    model_type = model.config.model_type
    peft_config = lora_config(model_args, token_ids, model_type) if model_args.use_peft else None
    if cfg.method == "sft_after_multiturn":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, cfg.multiturn_adapter, is_trainable=True)
        peft_config = None  # continue the multiturn adapter rather than start a new one
    trainer = _trainer(cfg, model, processor, train_dataset, peft_config, args)
    name_fsdp_layers(trainer.accelerator, trainer.model)
    resume = args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "latest"):
        resume = True
    started = time.monotonic()
    result = trainer.train(resume_from_checkpoint=resume)
    out = Path(args.output_dir)
    trainer.save_model(str(out))
    trainer.save_state()  # trainer_state.json: the logged losses and rewards
    processor.save_pretrained(str(out))
    # The Trainer pickles its arguments; keep them as JSON so nothing needs unpickling.
    (out / "training_args.bin").unlink(missing_ok=True)
    (out / "training_args.json").write_text(args.to_json_string())
    record = {
        "method": cfg.method,
        "base_model": model_args.model_name_or_path,
        "base_revision": model_args.model_revision,
        "reward_tokens": reward_map(cfg) if cfg.method == "crl" else None,
        "reward_special_tokens": bool(token_ids),
        "conditioning": reward_map(cfg)["good"] if cfg.method == "crl" else None,
        "max_image_tokens": cfg.max_image_tokens,
        "data": cfg.data,
        "general": cfg.general,
        "general_ratio": cfg.general_ratio,
        "rows": len(train_dataset),
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "seconds": round(time.monotonic() - started, 1),
        "lora": peft_config.to_dict() if peft_config else None,
    }
    (out / RECORD_FILE).write_text(json.dumps(record, indent=2, default=str))
    if cfg.merge:
        merged = (
            trainer.model.merge_and_unload()
            if hasattr(trainer.model, "merge_and_unload")
            else trainer.model
        )
        merged.save_pretrained(str(out / "merged"), safe_serialization=True)
        processor.save_pretrained(str(out / "merged"))
        (out / "merged" / RECORD_FILE).write_text(json.dumps(record, indent=2, default=str))
    return trainer


def _trainer(cfg, model, processor, dataset, peft_config, args):
    # Labels end on a token generation stops on, whatever the chat template writes.
    stops = stop_token_ids(processor.tokenizer, model.generation_config)
    if METHODS[cfg.method][1] == "dpo":
        from trl import DPOTrainer

        collator = PreferenceCollator(processor=processor, max_length=args.max_length,
                                      stop_ids=stops)  # fmt: skip
        return DPOTrainer(
            model=model, args=args, train_dataset=dataset, processing_class=processor,
            peft_config=peft_config, data_collator=collator,
        )  # fmt: skip
    from trl import SFTTrainer

    collator = PromptCompletionCollator(
        processor=processor, max_length=args.max_length, stop_ids=stops,
        reward_tokens=reward_map(cfg),
    )  # fmt: skip
    # The collator reads the `reward` column, which TRL would otherwise drop as unused.
    args.remove_unused_columns = False
    return SFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=processor,
        peft_config=peft_config, data_collator=collator,
    )  # fmt: skip

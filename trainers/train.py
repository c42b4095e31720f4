"""`macaroon train`: one entry for every METHOD, on TRL's SFTTrainer, DPOTrainer and GRPOTrainer.

Everything that can go wrong with the inputs is checked before the model is loaded.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from datasets import Dataset, DatasetDict
from pipeline.chat import stop_token_ids
from pipeline.formats import REWARDS
from pipeline.model_source import check_adapter
from trainers.collator import PreferenceCollator, PromptCompletionCollator
from trainers.config import (
    INIT_METHODS,
    METHODS,
    RECORD_FILE,
    MacaroonTrainConfig,
    RewardJudgeConfig,
)
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
    text_layers,
    train_only_last_layers,
)


def prepare_prompts(
    cfg: MacaroonTrainConfig, judge: RewardJudgeConfig, out: str, conditioning: str | None
) -> Dataset:
    """METHOD=grpo: the distinct questions with their images and types, conditioned."""
    from pipeline.criteria import load_criteria
    from trainers.prompts import grpo_prompts

    types = set(load_criteria(judge.criteria))
    dataset = grpo_prompts(cfg.data, types, Path(out) / "prompt_images", conditioning)
    if cfg.check_images:
        check_images(dataset, f"{cfg.data} (questions)")
    return dataset


def init_record(cfg: MacaroonTrainConfig) -> dict | None:
    """The training record of --init_adapter (checked to be CRL or SFT), or None."""
    if not cfg.init_adapter:
        return None
    check_adapter(cfg.init_adapter, "--init_adapter", contents=False)  # missing: "not found"
    path = Path(cfg.init_adapter) / RECORD_FILE
    if not path.is_file():
        raise DataError(
            f"--init_adapter {cfg.init_adapter}: holds no {RECORD_FILE}; pass the OUT of "
            f"`make train METHOD=crl` or `METHOD=sft` (or one of its checkpoint-N)"
        )
    record = json.loads(path.read_text())
    if record.get("method") not in INIT_METHODS or not record.get("lora"):
        raise DataError(
            f"--init_adapter {cfg.init_adapter}: a METHOD={record.get('method')} "
            f"{'adapter' if record.get('lora') else 'full fine-tune'}; GRPO starts from a "
            f"LoRA adapter of METHOD {' or '.join(INIT_METHODS)}"
        )
    return record


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


def check_start(cfg: MacaroonTrainConfig, model_args, trust_remote_code: bool = False) -> None:
    """Refuse, before any weights load, a run that cannot work as asked."""
    if cfg.train_last_layers is not None:
        _check_last_layers(cfg, model_args, trust_remote_code)
    if cfg.method == "grpo" and (cfg.general or cfg.train_last_layers is not None):
        raise ValueError(
            "METHOD=grpo rewards answers by their question's rubric: --general data has no "
            "question types (unset it), and it trains a LoRA adapter (unset --train_last_layers)"
        )
    if cfg.method == "sft_after_multiturn":
        if cfg.multiturn_adapter:
            check_adapter(cfg.multiturn_adapter, "--multiturn_adapter", contents=False)
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


def _check_last_layers(cfg: MacaroonTrainConfig, model_args, trust_remote_code: bool) -> None:
    n = cfg.train_last_layers
    if model_args.use_peft:
        raise ValueError(
            f"--train_last_layers {n} fine-tunes those layers' own weights, not a LoRA adapter: "
            "add --use_peft false (configs/train/dpo_original.yaml sets it)"
        )
    if cfg.method == "sft_after_multiturn":
        raise ValueError(
            "sft_after_multiturn continues the multiturn LoRA adapter; --train_last_layers "
            "cannot apply: unset it"
        )
    if cfg.method == "crl" and cfg.reward_special_tokens:
        raise ValueError(
            "--reward_special_tokens trains the new tokens' embedding rows, which "
            "--train_last_layers freezes: use one or the other"
        )
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(
        model_args.model_name_or_path, revision=model_args.model_revision,
        trust_remote_code=trust_remote_code,
    )  # fmt: skip
    if n > text_layers(config):
        raise ValueError(
            f"--train_last_layers {n}: {model_args.model_name_or_path} has "
            f"{text_layers(config)} language-model layers; choose at most that many"
        )


def run_train(
    cfg: MacaroonTrainConfig,
    model_args,
    args,
    general: DatasetDict | None = None,
    judge: RewardJudgeConfig | None = None,
) -> Path:
    """Train, save the adapter (safetensors) and its record; returns the output folder."""
    train(cfg, model_args, args, general, judge)
    return Path(args.output_dir)


def train(
    cfg: MacaroonTrainConfig,
    model_args,
    args,
    general: DatasetDict | None = None,
    judge: RewardJudgeConfig | Callable | None = None,
):
    """`run_train`, returning the TRL trainer (its model and state) after saving.

    METHOD=grpo takes `judge`: the reward judge's config, or any TRL reward function."""
    import torch

    check_start(cfg, model_args, args.trust_remote_code)
    init = init_record(cfg)
    if init:
        _check_init_base(cfg.init_adapter, init, model_args.model_name_or_path)
    reward = _reward(cfg, judge, args) if cfg.method == "grpo" else None
    rollouts = None
    if cfg.method == "grpo":
        from trainers.rollouts import rollout_engine

        rollouts = rollout_engine(args, _rollout_obstacle(cfg, model_args, init))
        print(f"GRPO rollouts on {rollouts['engine']}: {rollouts['why']}", flush=True)
        conditioning = (init or {}).get("conditioning")
        judge_cfg = judge if isinstance(judge, RewardJudgeConfig) else RewardJudgeConfig()
        train_dataset = prepare_prompts(cfg, judge_cfg, args.output_dir, conditioning)
    else:
        train_dataset = prepare_data(cfg, args.seed, general)
    if not torch.cuda.is_available():
        args.bf16 = (
            False  # no mixed-precision gain on CPU, and exact float32 learns the tiny models
        )
    model, processor = load_model_and_processor(
        model_args, args.trust_remote_code, cfg.max_image_tokens
    )
    if init and init.get("reward_special_tokens"):
        processor = _processor_with_reward_tokens(cfg.init_adapter, model, model_args, cfg)
    token_ids = None
    if cfg.method == "crl" and cfg.reward_special_tokens:
        token_ids = add_reward_tokens(model, processor, list(reward_map(cfg).values()))
    if cfg.train_last_layers is not None:
        train_only_last_layers(model, cfg.train_last_layers)
    model_type = model.config.model_type
    peft_config = lora_config(model_args, token_ids, model_type) if model_args.use_peft else None
    if cfg.method == "sft_after_multiturn":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, cfg.multiturn_adapter, is_trainable=True)
        peft_config = None  # continue the multiturn adapter rather than start a new one
    if init:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, cfg.init_adapter, is_trainable=True)
        peft_config = None  # GRPO continues the CRL or SFT adapter
    record = functools.partial(
        run_record, cfg, model_args, rows=len(train_dataset),
        lora=peft_config or (_adapter_config(model) if init else None),
        special_tokens=bool(token_ids) or bool(init and init.get("reward_special_tokens")),
        init=init, rollouts=rollouts,
    )  # fmt: skip
    ref_model = None
    if METHODS[cfg.method][1] == "dpo" and peft_config is None:
        # TRL would reload the reference from the config's path, without --model_revision.
        ref_model, _ = load_model_and_processor(
            model_args, args.trust_remote_code, cfg.max_image_tokens
        )
    trainer = _trainer(
        cfg, model, processor, train_dataset, peft_config, args, ref_model, reward, rollouts
    )
    started = time.monotonic()
    name_fsdp_layers(trainer.accelerator, trainer.model)
    trainer.add_callback(CheckpointRecord(record, started))
    resume = args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "latest"):
        resume = True
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    finally:
        if hasattr(reward, "close"):  # the judge's server and record store
            reward.close()
        if getattr(trainer, "rollouts", None) is not None:  # the rollouts' vLLM engine
            trainer.rollouts.close()
    if hasattr(reward, "counts"):
        counts = {k: reward.counts[k] for k in ("calls", "cached", "judged", "unparsed", "failed")}
        # Over every process's answers, counted where they were judged: rank 0 (JudgeReward).
        counts.update(processes=args.world_size, counted_on_rank=0)
        record = functools.partial(record, judge=counts)
        print(
            f"reward judge: {counts['calls']} calls, {counts['cached']} from the record store; "
            f"{counts['judged']} judged, {counts['unparsed']} unparsed and {counts['failed']} "
            "failed (no reward: left out of their groups)"
        )
    out = Path(args.output_dir)
    trainer.save_model(str(out))
    trainer.save_state()  # trainer_state.json: the logged losses and rewards
    if not args.should_save:  # another process of a multi-process run writes the folder
        return trainer
    processor.save_pretrained(str(out))
    args_as_json(out, args)
    final = record(
        steps=trainer.state.global_step,
        train_loss=result.training_loss,
        seconds=round(time.monotonic() - started, 1),
    )
    write_record(out, final)
    if cfg.merge:
        merged = (
            trainer.model.merge_and_unload()
            if hasattr(trainer.model, "merge_and_unload")
            else trainer.model
        )
        merged.save_pretrained(str(out / "merged"), safe_serialization=True)
        processor.save_pretrained(str(out / "merged"))
        write_record(out / "merged", final)
    return trainer


def run_record(
    cfg: MacaroonTrainConfig,
    model_args,
    *,
    rows: int,
    lora,
    special_tokens: bool,
    steps: int,
    train_loss: float | None = None,
    seconds: float | None = None,
    init: dict | None = None,
    judge: dict | None = None,
    rollouts: dict | None = None,
) -> dict:
    """The run's `macaroon.json`: how to load and condition what it saved at step `steps`.

    The final folder and every checkpoint-N get this same record (N as `steps`), so
    evaluating any of them applies the CRL token and finds the base model by itself. A GRPO
    run from a CRL adapter (`init`) keeps that adapter's tokens and conditioning.
    """
    crl = cfg.method == "crl"
    init = init or {}
    return {
        "method": cfg.method,
        "base_model": model_args.model_name_or_path,
        "base_revision": model_args.model_revision,
        "reward_tokens": reward_map(cfg) if crl else init.get("reward_tokens"),
        "reward_special_tokens": special_tokens,
        "conditioning": reward_map(cfg)["good"] if crl else init.get("conditioning"),
        "init_adapter": cfg.init_adapter,
        "init_method": init.get("method"),
        "judge": judge,  # grpo: judge calls, cached, failed and unparsed over the run
        "rollouts": rollouts,  # grpo: {"engine": "hf" | "vllm", "why": ...}
        "max_image_tokens": cfg.max_image_tokens,
        "data": cfg.data,
        "general": cfg.general,
        "general_ratio": cfg.general_ratio,
        "rows": rows,
        "steps": steps,
        "train_loss": train_loss,  # the run's mean; None in a checkpoint (see its trainer_state)
        "seconds": seconds,
        "lora": lora.to_dict() if lora else None,
        "train_last_layers": cfg.train_last_layers,  # full fine-tuning of those layers only
    }


def write_record(folder: Path, record: dict) -> None:
    _write_atomically(folder / RECORD_FILE, json.dumps(record, indent=2, default=str))


def args_as_json(folder: Path, args) -> None:
    """The Trainer pickles its arguments; keep them as JSON so nothing needs unpickling.

    Resuming reads trainer_state.json, the optimizer, scheduler and RNG files of a
    checkpoint, never training_args.bin, so a checkpoint without it resumes the same.
    """
    _write_atomically(folder / "training_args.json", args.to_json_string())
    (folder / "training_args.bin").unlink(missing_ok=True)


def _write_atomically(path: Path, text: str) -> None:
    # A run killed mid-write leaves the old file or none, never a half-written record.
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_text(text)
    os.replace(partial, path)


class CheckpointRecord(TrainerCallback):
    """Gives every checkpoint-N the run's record, so an intermediate checkpoint evaluates
    as the run's METHOD (the paper's CRL model is the step-10000 checkpoint, not the end)."""

    def __init__(self, record: Callable[..., dict], started: float):
        self.record, self.started = record, started

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if args.should_save and folder.is_dir():  # the process that wrote the checkpoint
            args_as_json(folder, args)
            seconds = round(time.monotonic() - self.started, 1)
            write_record(folder, self.record(steps=state.global_step, seconds=seconds))
        return control


def _check_init_base(adapter: str, init: dict, model: str) -> None:
    base = init.get("base_model")
    same = base == model or (base and Path(base).exists() and Path(model).exists()
                             and Path(base).resolve() == Path(model).resolve())  # fmt: skip
    if not same:
        raise DataError(
            f"--init_adapter {adapter} was trained on {base}, not --model_name_or_path "
            f"{model}: pass MODEL={base}"
        )


def _reward(cfg: MacaroonTrainConfig, judge, args):
    """The reward function of a GRPO run: the rubric judge, unless the caller passed one."""
    if callable(judge):
        return judge
    from trainers.reward import JudgeReward

    judge = judge or RewardJudgeConfig()
    # One store for all processes: rank 0 alone opens it and judges for every rank.
    store = Path(judge.judge_records or Path(args.output_dir) / "judgments.jsonl")
    return JudgeReward(judge, store, args.max_completion_length)


def _processor_with_reward_tokens(adapter: str, model, model_args, cfg: MacaroonTrainConfig):
    """The CRL adapter's processor (its tokenizer holds <|good|>), the base sized to it."""
    from transformers import AutoProcessor

    from pipeline.families.image_tokens import processor_kwargs

    limits = processor_kwargs(
        model_args.model_name_or_path, cfg.max_image_tokens, model_args.model_revision
    )
    processor = AutoProcessor.from_pretrained(adapter, **limits)
    model.resize_token_embeddings(len(processor.tokenizer))
    return processor


def _adapter_config(model):
    return model.peft_config["default"]


def _rollout_obstacle(cfg: MacaroonTrainConfig, model_args, init: dict | None) -> str | None:
    """Why this GRPO run's adapter cannot be handed to vLLM as a LoRA each step, or None."""
    from pipeline.backends.lora import lora_obstacle

    if init:
        config = json.loads((Path(cfg.init_adapter) / "adapter_config.json").read_text())
    elif not model_args.use_peft:
        return "none (--use_peft false trains the whole model)"
    else:
        config = {"peft_type": "LORA", "r": model_args.lora_r,
                  "modules_to_save": model_args.lora_modules_to_save}  # fmt: skip
    return lora_obstacle(config, init, model_args.model_name_or_path, model_args.model_revision)


def _trainer(
    cfg, model, processor, dataset, peft_config, args, ref_model=None, reward=None, rollouts=None
):
    if METHODS[cfg.method][1] == "grpo":
        from trl import GRPOTrainer

        trainer_class, engine = GRPOTrainer, None
        if rollouts and rollouts["engine"] == "vllm-lora":
            from trainers.lora_rollouts import LoraRollouts, lora_grpo_trainer

            engine = LoraRollouts(model.name_or_path, Path(args.output_dir) / "rollout_adapters",
                                  args.vllm_max_model_length)  # fmt: skip
            trainer_class = lora_grpo_trainer(engine)
        trainer = trainer_class(
            model=model, reward_funcs=[reward], args=args, train_dataset=dataset,
            processing_class=processor, peft_config=peft_config,
        )  # fmt: skip
        trainer.rollouts = engine
        return trainer
    # Labels end on a token generation stops on, whatever the chat template writes.
    stops = stop_token_ids(processor.tokenizer, model.generation_config)
    if METHODS[cfg.method][1] == "dpo":
        from trl import DPOTrainer

        collator = PreferenceCollator(processor=processor, max_length=args.max_length,
                                      stop_ids=stops)  # fmt: skip
        return DPOTrainer(
            model=model, ref_model=ref_model, args=args, train_dataset=dataset,
            processing_class=processor, peft_config=peft_config, data_collator=collator,
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

"""A trained model as every stage that generates sees it: its record, conditioning and identity.

`macaroon train` writes `macaroon.json` beside what it saves (an adapter folder, or full
weights with --use_peft false): METHOD, base model, reward tokens. Evaluation and
imagination read it here, so whoever runs a trained model need not know how it was
trained: a CRL model gets its `good` token on every backend.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.backends import BackendConfig
from pipeline.chat import with_reward_token
from pipeline.families.image_tokens import processor_kwargs
from pipeline.fingerprint import folder_hash, model_identity

RECORD_FILE = "macaroon.json"  # written beside the adapter: METHOD, reward tokens, base


@dataclass
class AdapterConfig:
    """The trained model a stage runs, on top of its --model (which then means the base)."""

    adapter: str | None = field(
        default=None,
        metadata={"help": "A `make train` output folder or one of its checkpoint-N, run on "
                  "--model (unset: the base its macaroon.json names) by any backend: hf "
                  "attaches it, vllm serves it as a LoRA (or merges it once where it cannot), "
                  "openai asks --base_url for the adapter named --model (unset: one is served "
                  "here). Its METHOD decides the conditioning (CRL: `good`)."},
    )  # fmt: skip
    conditioning: str | None = field(
        default=None,
        metadata={"help": "The reward token put before each question (`good`), or `none`. "
                  "Unset: what the model's macaroon.json says; an adapter without one is "
                  "an error unless this says what to do."},
    )  # fmt: skip


@dataclass
class AnswerConfig(AdapterConfig, BackendConfig):
    """The model that answers: a model on its backend, or a trained adapter of it with the
    adapter's conditioning (lmms-eval's tasks use it; `macaroon eval` adds PIE and the
    judge)."""


def run_name(cfg) -> str:
    """A run's default name: the model's folder name, `+` the adapter's (`llava-tiny+crl`)."""
    parts = [Path(cfg.model.rstrip("/")).name]
    if cfg.adapter:
        parts.append(Path(cfg.adapter.rstrip("/")).name)
    return "+".join(parts)


def run_folder(root: str, name: str) -> str:
    """ROOT/NAME with the characters a folder name should not hold replaced."""
    return f"{root}/{re.sub(r'[^A-Za-z0-9_.+-]', '_', name)}"


def read_record(folder: str | Path) -> dict | None:
    """The training record in `folder`, or None where there is none (a base model)."""
    path = Path(folder) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{path}: damaged ({err}); `macaroon train` writes it: retrain, or copy it from "
            "the run's final folder"
        ) from err
    if not isinstance(record, dict):
        raise ValueError(f"{path}: expected a JSON object (as `macaroon train` writes it)")
    return record


def conditioned(messages: list[dict], record: dict | None) -> list[dict]:
    """The messages as the trained model expects them (CRL: reward token `good` first)."""
    if record and record.get("conditioning"):
        return with_reward_token(messages, record["conditioning"])
    return messages


def trained_record(cfg) -> dict | None:
    """The training record of the model `cfg` runs, its `conditioning` as this run uses it.

    `cfg` has AdapterConfig's fields and --model. --conditioning overrides the record; an
    adapter without a record is refused unless --conditioning says what to do.
    """
    record = read_record(cfg.adapter) if cfg.adapter else read_record(cfg.model)
    if cfg.conditioning is not None:
        token = None if cfg.conditioning == "none" else cfg.conditioning
        return {**(record or {}), "conditioning": token}
    if cfg.adapter and record is None:
        raise ValueError(
            f"{cfg.adapter}: no {RECORD_FILE} says how this adapter was trained, so whether "
            "questions need the reward token is unknown; pass --conditioning good (trained "
            "with CRL) or --conditioning none"
        )
    return record


def adapter_base(cfg, record: dict | None) -> str:
    """The base model of `cfg.adapter`: --model where it names one, else the record's.

    On the openai backend --model names what the server serves (the adapter), so the base
    is always the record's.
    """
    record = record or {}
    explicit = cfg.backend != "openai" and cfg.model != BackendConfig.model
    base = cfg.model if explicit else record.get("base_model")
    if not base:
        raise ValueError(f"{cfg.adapter}: its base model is unknown; pass --model BASE")
    return base


def answerer_identity(cfg, record: dict | None) -> dict | None:
    """What decides a trained model's answers, for record keys (pipeline/fingerprint.py):
    the adapter's weights and its base model's content or revision, never a folder's name
    nor the backend, so hf, vllm and a served adapter share their answers. None without
    an adapter (the caller keys by `backend_identity`)."""
    if not cfg.adapter:
        return None
    base, revision = adapter_base(cfg, record), (record or {}).get("base_revision")
    return {
        "base": model_identity(base, revision),
        "adapter": folder_hash(cfg.adapter),
        "processor": processor_kwargs(base, cfg.max_image_tokens, revision),
    }


class ConditionedBackend:
    """A backend whose every request gets the trained model's conditioning first."""

    def __init__(self, backend, record: dict | None):
        self.backend, self.record = backend, record
        self.name, self.model_id = backend.name, backend.model_id

    def generate(self, requests):
        from dataclasses import replace

        conditioned_requests = [
            replace(r, messages=conditioned(r.messages, self.record)) for r in requests
        ]
        yield from self.backend.generate(conditioned_requests)

    def close(self) -> None:
        from pipeline.backends import close_backend

        close_backend(self.backend)

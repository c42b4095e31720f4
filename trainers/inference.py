"""Inference on a trained model: base + adapter, batched, with the adapter's conditioning.

A trained folder carries `macaroon.json` (METHOD, base model, reward tokens), so whoever
evaluates it does not need to know how it was trained: a CRL model gets its `good` token.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from pipeline.backends import Completion, Request
from pipeline.backends.hf import HFBackend
from pipeline.families.image_tokens import processor_kwargs
from pipeline.model_source import model_errors
from trainers.collator import with_reward_token
from trainers.config import RECORD_FILE


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


class TrainedModelBackend(HFBackend):
    """The `hf` backend over a training output: an adapter folder or merged weights."""

    def __init__(
        self,
        trained: str,
        base: str | None = None,
        batch_size: int = 16,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        condition: bool = True,
        max_image_tokens: int | None = None,
        record: dict | None = None,
    ):
        """`condition=False` leaves the messages alone (the caller conditions them itself);
        `record` replaces the folder's own training record (evaluation's --conditioning)."""
        self.record = record if record is not None else read_record(trained)
        self.condition = condition
        is_adapter = (Path(trained) / "adapter_config.json").is_file()
        base = (base or (self.record or {}).get("base_model")) if is_adapter else trained
        if not base:
            raise ValueError(f"{trained}: an adapter without {RECORD_FILE}: pass the base model")
        revision = (self.record or {}).get("base_revision") if is_adapter else None
        super().__init__(
            base, batch_size, dtype, revision=revision, trust_remote_code=trust_remote_code,
            max_image_tokens=max_image_tokens,
        )  # fmt: skip
        if is_adapter:
            self._attach(trained, processor_kwargs(base, max_image_tokens, revision))
        self.model_id = f"{base}+{trained}" if is_adapter else trained
        self.method = (self.record or {}).get("method")

    def _attach(self, adapter: str, limits: dict) -> None:
        from peft import PeftModel
        from transformers import AutoProcessor

        if self.record and self.record.get("reward_special_tokens"):
            # The adapter's tokenizer holds the new reward tokens; the base needs their rows.
            self.processor = AutoProcessor.from_pretrained(adapter, **limits)
            self.processor.tokenizer.padding_side = "left"
            self.model.resize_token_embeddings(len(self.processor.tokenizer))
        with model_errors(adapter, "--adapter"):
            self.model = PeftModel.from_pretrained(self.model, adapter).eval()

    def generate(self, requests: Sequence[Request]) -> Iterator[Completion]:
        if self.condition:
            requests = [replace(r, messages=conditioned(r.messages, self.record)) for r in requests]
        yield from super().generate(requests)

"""Inference on a trained model: base + adapter, batched, with the adapter's conditioning.

A trained folder carries `macaroon.json` (METHOD, base model, reward tokens), so whoever
evaluates it does not need to know how it was trained: a CRL model gets its `good` token.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from pipeline.adapters import RECORD_FILE, conditioned, read_record
from pipeline.backends import Completion, Request
from pipeline.backends.hf import HFBackend
from pipeline.families.image_tokens import processor_kwargs

__all__ = ["TrainedModelBackend", "conditioned", "read_record"]


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
            self.attach_adapter(
                trained, self.record, processor_kwargs(base, max_image_tokens, revision)
            )
        self.model_id = f"{base}+{trained}" if is_adapter else trained
        self.method = (self.record or {}).get("method")

    def generate(self, requests: Sequence[Request]) -> Iterator[Completion]:
        if self.condition:
            requests = [replace(r, messages=conditioned(r.messages, self.record)) for r in requests]
        yield from super().generate(requests)

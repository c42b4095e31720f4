"""The backend that answers as a trained model (`--adapter`), on hf, vllm or openai.

- hf: the base model with the PEFT adapter attached (or the full weights).
- vllm: one engine on the base weights with the adapter as a LoRA; where vLLM cannot apply
  it, the adapter merged once (pipeline/backends/lora.py), said in one line.
- openai: the adapter by its name at --base_url (--model names it there), or, without
  --base_url, a vLLM server started here with it.

Conditioning is the caller's (evaluation keys the conditioned messages; imagination wraps
the backend in `ConditionedBackend`), so every backend gets the same requests.
`open_shared` puts the base and several adapters on one vLLM engine, loading the base
weights once (a reproduction evaluates the base and every row this way).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from pipeline.adapters import adapter_base
from pipeline.backends import (
    Backend,
    BackendConfig,
    open_served,
    open_vllm,
    start_server,
)
from pipeline.backends.lora import ServedAdapter, adapter_name, is_adapter, serve_adapter
from pipeline.families.image_tokens import processor_kwargs


def open_trained(cfg: BackendConfig, record: dict | None) -> Backend:
    """The backend for `cfg.adapter` (a trained folder) as `cfg.backend` runs it."""
    base = adapter_base(cfg, record)
    revision = cfg.revision or (record or {}).get("base_revision")
    if cfg.backend == "hf":
        return _hf(cfg, base, revision, record)
    if cfg.backend == "vllm":
        served = served_adapter(cfg, base, revision, record)
        if not served.as_lora:
            return open_vllm(cfg, served.model)
        return open_vllm(cfg, base, revision, [served]).with_adapter(served.name, owner=True)
    if cfg.backend == "openai":
        if cfg.base_url:  # a server already serves it: by the name --model gives
            name = cfg.model if cfg.model != BackendConfig.model else adapter_name(cfg.adapter)
            return open_served(cfg, name, base)
        served = served_adapter(cfg, base, revision, record)
        if not served.as_lora:
            return open_served(cfg, served.model, served.model, start_server(cfg, served.model))
        return open_served(cfg, served.name, base, start_server(cfg, base, [served]))
    raise ValueError(f"--backend {cfg.backend!r}: unknown; choose one of hf, vllm, openai")


def served_adapter(
    cfg: BackendConfig, base: str, revision, record, adapter: str | None = None
) -> ServedAdapter:
    """How vLLM runs `adapter` (default `cfg.adapter`); one line says so when not as a LoRA."""
    adapter = adapter or cfg.adapter
    served = serve_adapter(adapter, base, record, revision, None, cfg.trust_remote_code)
    if not served.as_lora:
        print(served.line(), flush=True)
    return served


def _hf(cfg: BackendConfig, base: str, revision: str | None, record: dict | None) -> Backend:
    from pipeline.backends.hf import HFBackend

    common = dict(trust_remote_code=cfg.trust_remote_code, max_image_tokens=cfg.max_image_tokens)
    if not is_adapter(cfg.adapter):  # full weights: a model of its own
        return HFBackend(cfg.adapter, cfg.batch_size, cfg.dtype, **common)
    backend = HFBackend(base, cfg.batch_size, cfg.dtype, revision=revision, **common)
    limits = processor_kwargs(base, cfg.max_image_tokens, revision)
    backend.attach_adapter(cfg.adapter, record, limits)
    backend.model_id = f"{base}+{cfg.adapter}"
    return backend


class SharedEngine:
    """One vLLM engine on a base model serving several adapters as LoRAs.

    `backend(adapter)` is the backend for one of them (None: the base); closing it leaves
    the engine running, `close()` ends it. Adapters vLLM cannot apply as LoRAs get an
    engine of their own when asked for (merged once; one line says why), beside the shared
    one: each engine runs in its own process, as vLLM starts them by default.
    """

    def __init__(self, cfg: BackendConfig, base: str, adapters: dict[str, dict | None]):
        """`adapters`: folder -> its training record, all trained on `base`."""
        self.cfg, self.base, self.records = cfg, base, adapters
        self.served = {
            folder: served_adapter(cfg, base, cfg.revision, record, folder)
            for folder, record in adapters.items()
        }
        loras = [s for s in self.served.values() if s.as_lora]
        names = [s.name for s in loras]
        if len(set(names)) < len(names):  # checkpoint-N of two runs, say: unique names
            loras = [replace(s, name=f"{s.name}-{i}") for i, s in enumerate(loras)]
            self.served.update({s.adapter: s for s in loras})
        self.loras, self.engine = loras, None

    def backend(self, adapter: str | None) -> Backend:
        if self.engine is None:  # on first use: a run with every answer stored loads nothing
            self.engine = open_vllm(self.cfg, self.base, self.cfg.revision, self.loras)
        if adapter is None:
            return _Borrowed(self.engine)
        served = self.served[adapter]
        if served.as_lora:
            return self.engine.with_adapter(served.name)
        return open_vllm(self.cfg, served.model)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


class _Borrowed:
    """The shared engine's base model, as a backend whose close leaves the engine running."""

    name = "vllm"

    def __init__(self, engine):
        self.engine, self.model_id = engine, engine.model_id

    def generate(self, requests: Sequence):
        yield from self.engine.generate(requests)

    def close(self) -> None:
        pass

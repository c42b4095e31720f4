"""Generation backends behind one interface (docs/DESIGN.md §4).

A backend takes a list of chat `Request`s and yields one `Completion` per request as each
finishes (any order; `Completion.index` says which). `generate_in_order` collects them in
request order. Every backend sees the same requests: messages in the transformers/OpenAI
chat layout, with `{"type": "image"}` parts filled from `Request.images` in order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Protocol

from pipeline.families.image_tokens import DEFAULT_MAX_IMAGE_TOKENS


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters; part of every record key.

    They are the whole story: every backend overrides the model's own generation defaults
    with them (Qwen2-VL-Instruct publishes top_k 1, which would make any temperature
    greedy; transformers adds top_k 50 when nothing says otherwise), so the same settings
    mean the same decoding on hf, vllm and an OpenAI-compatible server.
    """

    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off
    seed: int = 0


@dataclass(frozen=True)
class Request:
    """One chat request. `messages` hold `{"type": "image"}` placeholders, one per image."""

    messages: list[dict]
    images: tuple[Path, ...] = ()
    sampling: Sampling = field(default_factory=Sampling)
    # An OpenAI `response_format` for this request alone (the judge offers each question
    # type only its own labels). The openai backend sends it; the others cannot constrain
    # decoding and ignore it, so callers put it in a record key only where it is sent.
    response_format: dict | None = None


class EndpointUnreachable(RuntimeError):
    """An endpoint refused or could not be reached for a run of requests in a row: the stage
    stops instead of failing every item one by one. Finished records are kept; the items it
    did not get to are stored as nothing, so the rerun does them."""


@dataclass(frozen=True)
class Completion:
    """The answer to `requests[index]`: `text`, or `error` (a reason) when it failed."""

    index: int
    text: str | None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # "stop" (the model ended its answer) or "length" (cut off by max_tokens); None when
    # the backend could not say.
    finish_reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


class Backend(Protocol):
    name: str  # "hf", "vllm", "openai"
    model_id: str  # what record keys and dataset cards name (path, Hub id or API model)

    def generate(self, requests: Sequence[Request]) -> Iterator[Completion]:
        """Yield one Completion per request as it finishes. A failure is a Completion
        with `error` set, never an exception, unless the backend itself cannot run."""
        ...

    def close(self) -> None: ...


def generate_in_order(backend: Backend, requests: Sequence[Request]) -> list[Completion]:
    done = sorted(backend.generate(requests), key=lambda c: c.index)
    assert [c.index for c in done] == list(range(len(requests))), "backend lost a request"
    return done


BACKENDS = ("hf", "vllm", "openai")
EXECUTORS = ("local", "ray")


@dataclass
class BackendConfig:
    """Which model answers, and how. Shared by every stage that generates."""

    backend: str = field(default="hf", metadata={"help": f"One of {', '.join(BACKENDS)}."})
    model: str = field(
        default="outputs/models/llava-tiny",
        metadata={"help": "Local folder or Hub id (hf, vllm); model name (openai)."},
    )
    revision: str | None = field(default=None, metadata={"help": "Model revision (hf, vllm)."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run model code shipped with the checkpoint (hf, vllm)."}
    )
    dtype: str = field(default="auto", metadata={"help": "bf16 on GPU, float32 on CPU if auto."})
    batch_size: int = field(default=16, metadata={"help": "Requests per forward pass (hf)."})
    tensor_parallel_size: int = field(default=1, metadata={"help": "GPUs per replica (vllm)."})
    gpu_memory_utilization: float | None = field(
        default=None, metadata={"help": "Share of GPU (CPU: RAM) memory vLLM takes; auto if unset."}
    )
    max_model_len: int | None = field(default=None, metadata={"help": "Context limit (vllm)."})
    max_image_tokens: int = field(
        default=DEFAULT_MAX_IMAGE_TOKENS,
        metadata={"help": "Cap on image tokens per image for dynamic-resolution models "
                  "(Qwen2-VL, Qwen2.5-VL, Qwen3-VL); 0 = as published (hf, vllm, local server)."},
    )  # fmt: skip
    base_url: str | None = field(
        default=None,
        metadata={
            "help": "OpenAI-compatible endpoint (openai). Unset with a local model folder: a "
            "vLLM server is started on 127.0.0.1 for the run."
        },
    )
    api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "Environment variable holding the API key."}
    )
    concurrency: int = field(default=32, metadata={"help": "Requests in flight (openai)."})
    max_retries: int = field(default=6, metadata={"help": "Retries per request (openai)."})
    max_retry_wait: float = field(
        default=60.0,
        metadata={"help": "Longest wait in seconds before a retry (openai), even when the "
                  "server's Retry-After asks for more."},
    )  # fmt: skip
    timeout: float = field(default=120.0, metadata={"help": "Seconds per request (openai)."})
    max_connection_failures: int = field(
        default=8,
        metadata={"help": "Stop the stage when this many requests in a row cannot connect "
                  "(refused, unknown host, TLS), each after its retries: the endpoint is down; "
                  "finished records are kept (openai). 0 = never stop."},
    )  # fmt: skip
    extended_sampling: bool | None = field(
        default=None,
        metadata={"help": "Send top_k, min_p and repetition_penalty, which OpenAI-compatible "
                  "servers such as vLLM take and OpenAI's API refuses (openai). Unset: everywhere "
                  "but api.openai.com, so a server's model defaults never replace ours."},
    )  # fmt: skip
    executor: str = field(
        default="local",
        metadata={"help": "Where the hf or vllm model runs: `local` (this process) or `ray` "
                  "(--replicas Ray actors, fed batches; the store stays in this process). The "
                  "openai backend always runs here: its server is what scales."},
    )  # fmt: skip
    ray_address: str | None = field(
        default=None,
        metadata={"help": "Ray cluster to join (ray): `auto` (the one `ray start` runs on "
                  "this machine) or ray://HEAD:10001. Unset: RAY_ADDRESS, else a local cluster "
                  "started for the run."},
    )  # fmt: skip
    replicas: int = field(
        default=1, metadata={"help": "Model replicas (ray), each loading the model once."}
    )
    gpus_per_replica: float | None = field(
        default=None,
        metadata={"help": "GPUs each replica holds (ray). Unset: tensor_parallel_size (vllm) "
                  "or 1 (hf) on a cluster with GPUs, else 0."},
    )  # fmt: skip
    cpus_per_replica: float = field(
        default=1.0, metadata={"help": "CPUs each replica holds (ray); its torch threads."}
    )
    ray_batch_size: int = field(
        default=256,
        metadata={"help": "Most requests sent to a replica at a time (ray): enough to keep a "
                  "vLLM engine full; a batch whose replica dies is run again whole."},
    )  # fmt: skip


def backend_identity(cfg: BackendConfig) -> dict:
    """What of `cfg` decides the model's text, for record keys (pipeline/fingerprint.py).

    The model's content or resolved revision, and the image-token cap where it changes the
    prompt; never batch size, concurrency or retries.
    """
    from pipeline.families.image_tokens import processor_kwargs
    from pipeline.fingerprint import is_model_folder, model_identity

    local = is_model_folder(cfg.model)
    endpoint = None
    if cfg.backend == "openai" and not local:
        endpoint = cfg.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
    identity = model_identity(cfg.model, cfg.revision, endpoint)
    if local or cfg.backend != "openai":
        identity["processor"] = processor_kwargs(cfg.model, cfg.max_image_tokens, cfg.revision)
    return identity


def open_backend(cfg: BackendConfig, extra_body: dict | None = None) -> Backend:
    """The backend `cfg` names, ready to generate (a local server is started if needed).

    `extra_body` goes into every request of the openai backend (e.g. `response_format`).
    With `--executor ray`, hf and vllm run as replicas on a Ray cluster (ray_executor.py).
    """
    _check_executor(cfg)
    if cfg.executor == "ray" and cfg.backend in ("hf", "vllm"):
        return on_executor(cfg, partial(open_backend, replace(cfg, executor="local")))
    if cfg.backend == "hf":
        from pipeline.backends.hf import HFBackend

        return HFBackend(
            cfg.model, cfg.batch_size, cfg.dtype, revision=cfg.revision,
            trust_remote_code=cfg.trust_remote_code, max_image_tokens=cfg.max_image_tokens,
        )  # fmt: skip
    if cfg.backend == "vllm":
        return open_vllm(cfg, cfg.model, cfg.revision)
    if cfg.backend == "openai":
        server = None
        if (Path(cfg.model) / "config.json").is_file() and not cfg.base_url:
            server = start_server(cfg, cfg.model)
        return open_served(cfg, cfg.model, cfg.model, server, extra_body)
    raise ValueError(f"--backend {cfg.backend!r}: unknown; choose one of {', '.join(BACKENDS)}")


def open_vllm(cfg: BackendConfig, model: str, revision: str | None = None, adapters=()):
    """A vLLM engine on `model` with `cfg`'s settings, serving `adapters` as LoRAs."""
    from pipeline.backends.vllm_engine import VLLMBackend

    return VLLMBackend(
        model, cfg.tensor_parallel_size, gpu_memory_utilization=cfg.gpu_memory_utilization,
        max_model_len=cfg.max_model_len, dtype=cfg.dtype, revision=revision,
        trust_remote_code=cfg.trust_remote_code, max_image_tokens=cfg.max_image_tokens,
        adapters=adapters,
    )  # fmt: skip


def start_server(cfg: BackendConfig, model: str, adapters=()):
    """A vLLM OpenAI-compatible server of the local folder `model` (and `adapters`) on
    127.0.0.1 for this run; close_backend stops it."""
    from pipeline.serve import VLLMServer

    return VLLMServer(
        model, max_model_len=cfg.max_model_len, dtype=cfg.dtype,
        max_image_tokens=cfg.max_image_tokens, adapters=adapters,
    ).start()  # fmt: skip


def open_served(
    cfg: BackendConfig, name: str, folder: str | None, server=None, extra_body: dict | None = None
) -> Backend:
    """The openai backend asking for the model `name` at `server` (else --base_url).

    `folder`: the local model folder behind `name` (a served adapter's base), whose
    tokenizer says whether the request must ask for the BOS.
    """
    from pipeline.backends.openai_api import OpenAIBackend

    extra_body = dict(extra_body or {})
    if folder and (Path(folder) / "config.json").is_file():
        from pipeline.chat import server_adds_bos

        # vLLM's chat endpoint adds no special tokens; ask for the BOS the template leaves
        # to the tokenizer, so the served prompt is the one training saw.
        if server_adds_bos(folder):
            extra_body.setdefault("add_special_tokens", True)
    base_url = server.base_url if server else cfg.base_url
    backend = OpenAIBackend(
        name, base_url, cfg.api_key_env, cfg.concurrency, cfg.max_retries, cfg.timeout,
        extra_body=extra_body or None, max_retry_wait=cfg.max_retry_wait,
        extended_sampling=cfg.extended_sampling,
        max_connection_failures=cfg.max_connection_failures,
    )  # fmt: skip
    backend.server = server  # stopped by close_backend
    return backend


def on_executor(cfg: BackendConfig, factory: Callable[[], Backend]) -> Backend:
    """`factory()` here (--executor local), or `--replicas` copies of it on Ray (ray).

    `factory` must pickle (a module-level function, a `functools.partial` of one): each
    replica calls it in its own process.
    """
    _check_executor(cfg)
    if cfg.executor == "local":
        return factory()
    from pipeline.backends.ray_executor import RayBackend, connect, default_gpus

    connect(cfg.ray_address)
    gpus = cfg.gpus_per_replica if cfg.gpus_per_replica is not None else default_gpus(cfg)
    return RayBackend(
        factory, cfg.backend, cfg.model, cfg.replicas, cfg.ray_batch_size, gpus,
        cfg.cpus_per_replica,
    )  # fmt: skip


def _check_executor(cfg: BackendConfig) -> None:
    if cfg.executor not in EXECUTORS:
        raise ValueError(
            f"--executor {cfg.executor!r}: unknown; choose one of {', '.join(EXECUTORS)}"
        )
    if cfg.executor == "ray" and min(cfg.replicas, cfg.ray_batch_size) < 1:
        raise ValueError(
            f"--replicas {cfg.replicas}, --ray_batch_size {cfg.ray_batch_size}: both must be >= 1"
        )


def close_backend(backend: Backend) -> None:
    backend.close()
    server = getattr(backend, "server", None)
    if server is not None:
        server.stop()

"""`macaroon serve MODEL --adapter NAME=DIR ...`: vLLM's OpenAI-compatible server on loopback.

The base model's weights load once; each trained adapter is served beside it as a LoRA
under its NAME, so `macaroon eval --backend openai --base_url URL --model NAME --adapter DIR`
evaluates it (DIR's macaroon.json still decides the conditioning and the record keys).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from commands.common import leading_paths
from pipeline.config import parse_config
from pipeline.families.image_tokens import DEFAULT_MAX_IMAGE_TOKENS


@dataclass
class ServeConfig:
    """`macaroon serve [MODEL] --adapter NAME=DIR [NAME=DIR ...]`."""

    adapter: list[str] = field(
        default_factory=list,
        metadata={"help": "Trained adapters to serve as LoRAs: NAME=DIR (DIR alone: named "
                  "after its folder). An adapter vLLM cannot apply as a LoRA is merged once "
                  "and, alone, served as the model under its NAME."},
    )  # fmt: skip
    port: int | None = field(default=None, metadata={"help": "Port on 127.0.0.1 (unset: free)."})
    max_model_len: int | None = field(default=None, metadata={"help": "Context limit."})
    dtype: str = field(default="auto", metadata={"help": "bf16 on GPU, float32 on CPU if auto."})
    max_image_tokens: int = field(
        default=DEFAULT_MAX_IMAGE_TOKENS,
        metadata={"help": "Cap on image tokens per image for dynamic-resolution models; 0 = as "
                  "published (as imagination and evaluation use it)."},
    )  # fmt: skip
    log: str | None = field(default=None, metadata={"help": "Server log (outputs/logs/...)."})


def cmd_serve(argv: Sequence[str]) -> int:
    from pipeline.serve import VLLMServer

    models = leading_paths(argv)
    (cfg,) = parse_config([ServeConfig], list(argv)[len(models) :], "macaroon serve")
    if len(models) > 1:
        raise ValueError(f"serve takes one MODEL, got {' '.join(models)}")
    model, adapters = plan(models[0] if models else None, cfg.adapter)
    server = VLLMServer(
        model, max_model_len=cfg.max_model_len, log=cfg.log, dtype=cfg.dtype,
        max_image_tokens=cfg.max_image_tokens, adapters=[a for a in adapters if a.as_lora],
        port=cfg.port, served_name=_served_name(model, adapters),
    )  # fmt: skip
    # SIGTERM ends this command as Ctrl-C does: the server goes with it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        server.start()
        for a in adapters:
            print(f"  {a.name}: macaroon eval --backend openai --base_url {server.base_url} "
                  f"--model {a.name} --adapter {a.adapter}", flush=True)  # fmt: skip
        print("serving until interrupted (Ctrl-C)", flush=True)
        code = server.process.wait()
        print(f"macaroon serve: the vLLM server exited with {code}; see {server.log_path}",
              file=sys.stderr)  # fmt: skip
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


def plan(model: str | None, specs: Sequence[str]):
    """(the folder vLLM loads, the adapters as it serves them) for MODEL and NAME=DIR specs.

    Every adapter must be trained on MODEL (unset: the base its macaroon.json names). One
    that vLLM cannot apply as a LoRA is merged once; served alone, its merged folder is the
    model, else the command is refused with the fix.
    """
    from pipeline.adapters import read_record
    from pipeline.backends.lora import serve_adapter

    named = [_name_and_folder(spec) for spec in specs]
    if not model and not named:
        raise ValueError("serve needs MODEL or --adapter NAME=DIR")
    if len({name for name, _ in named}) < len(named):
        raise ValueError(f"--adapter {' '.join(specs)}: every NAME must differ")
    adapters = []
    for name, folder in named:
        record = read_record(folder) or {}
        base = record.get("base_model")
        if not base and not model:
            raise ValueError(
                f"--adapter {name}={folder}: no macaroon.json names its base; pass MODEL"
            )
        model = model or base
        if base and not _same(base, model):
            raise ValueError(
                f"--adapter {name}={folder} was trained on {base}, not {model}: serve it "
                f"with its own base (macaroon serve {base} --adapter {name}={folder})"
            )
        served = serve_adapter(folder, model, record, record.get("base_revision"), name)
        if not served.as_lora:
            print(served.line(), flush=True)
        adapters.append(served)
    whole = [a for a in adapters if not a.as_lora]
    if whole and len(adapters) > 1:
        a = whole[0]
        raise ValueError(
            f"--adapter {a.name}={a.adapter}: {a.reason}, so it cannot be served beside other "
            f"adapters; serve it alone (macaroon serve --adapter {a.name}={a.adapter})"
        )
    return (whole[0].model if whole else model), adapters


def _served_name(model: str, adapters) -> str:
    """The model's name on the server: a merged adapter served alone answers to its NAME."""
    whole = [a for a in adapters if not a.as_lora]
    return whole[0].name if whole else model


def _name_and_folder(spec: str) -> tuple[str, str]:
    from pipeline.backends.lora import adapter_name

    name, _, folder = spec.rpartition("=")
    folder = folder or name
    if not Path(folder).is_dir():
        raise ValueError(f"--adapter {spec}: {folder} is not a folder (NAME=DIR)")
    return (name or adapter_name(folder)), folder


def _same(a: str, b: str) -> bool:
    if a == b:
        return True
    return Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve()

"""A trained adapter on vLLM (a LoRA on the engine) against hf + PEFT: the same items, one run.

Builds a tiny local model and an adapter with the trainers' LoRA settings (B drawn
non-zero, so it changes the answers), then answers the same greedy requests through
`macaroon eval`'s backends for an adapter (pipeline/backends/trained.py): hf at batch 16
and vLLM. Prints requests/s for both, how many answers agree, and the ratio. Engine
start-up is timed apart and left out of the rate, as a long run amortises it.
Run: .venv/bin/python benchmarks/bench_vllm_adapter.py [--arch llava] [--size small] [--n 64]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from bench_hf import requests

from pipeline.backends import BackendConfig, close_backend, generate_in_order


def make_adapter(base: Path, out: Path, seed: int = 0) -> Path:
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForImageTextToText
    from trl import ModelConfig

    from trainers.model import lora_config

    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
    args = ModelConfig(model_name_or_path=str(base), use_peft=True, lora_r=16, lora_alpha=32)
    peft = get_peft_model(model, lora_config(args, None, model.config.model_type))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in peft.named_parameters():
            if "lora_B" in name:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.1)
    peft.save_pretrained(out)
    record = {"method": "sft", "base_model": str(base), "conditioning": None}
    (out / "macaroon.json").write_text(json.dumps(record))
    return out


def timed(cfg: BackendConfig, work) -> tuple[float, float, list[str]]:
    """(seconds to open, requests/s after a warm-up, answers) of `cfg`'s adapter backend."""
    from pipeline.adapters import read_record
    from pipeline.backends.trained import open_trained

    start = time.perf_counter()
    backend = open_trained(cfg, read_record(cfg.adapter))
    opened = time.perf_counter() - start
    try:
        generate_in_order(backend, work[:4])  # warm-up
        start = time.perf_counter()
        done = generate_in_order(backend, work)
        rate = len(work) / (time.perf_counter() - start)
    finally:
        close_backend(backend)
    assert all(c.ok for c in done), [c.error for c in done if not c.ok][:3]
    return opened, rate, [c.text for c in done]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="llava")
    parser.add_argument("--size", default="small")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_tokens", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from pipeline.tiny_model import TinyModelConfig, build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(
            TinyModelConfig(arch=args.arch, size=args.size, out=str(Path(tmp) / "m"))
        )
        adapter = make_adapter(model, Path(tmp) / "adapter")
        work = requests(args.n, args.max_tokens)
        cfg = BackendConfig(model=str(model), batch_size=args.batch_size, max_model_len=4096)
        cfg.adapter = str(adapter)  # what AdapterConfig adds to eval's and imagine's config
        cfg.backend = "hf"
        hf_open, hf_rate, hf_texts = timed(cfg, work)
        cfg.backend = "vllm"
        vllm_open, vllm_rate, vllm_texts = timed(cfg, work)
    same = sum(a == b for a, b in zip(hf_texts, vllm_texts, strict=True))
    print(f"hf + peft (batch {args.batch_size}): {hf_rate:.1f} req/s, loaded in {hf_open:.0f}s")
    print(f"vLLM + LoRA: {vllm_rate:.1f} req/s, engine started in {vllm_open:.0f}s")
    print(f"answers equal on {same}/{len(work)} requests")
    print(
        f"adapter on vLLM vs hf ({args.arch}-{args.size}, {args.n} requests x "
        f"{args.max_tokens} tokens): ratio {vllm_rate / hf_rate:.2f}x"
    )


if __name__ == "__main__":
    main()

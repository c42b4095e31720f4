"""hf backend: batched generation vs one request at a time (the original code's loop).

Prints requests/s for both on the tiny local model and their ratio (target >= 6x at batch
16). Run: .venv/bin/python benchmarks/bench_hf.py [--arch llava] [--size tiny] [--n 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pipeline import DEFAULT_SAMPLES_DIR
from pipeline.backends import Request, Sampling
from pipeline.backends.hf import HFBackend
from pipeline.images import list_images
from pipeline.tiny_model import TinyModelConfig, build_tiny_model

QUESTIONS = [
    "What colour is the mug on the left?",
    "How many dogs are in the park?",
    "Which dish on the menu is the best?",
    "Why is the lamp switched off?",
]


def requests(n: int, max_tokens: int) -> list[Request]:
    images = list_images(DEFAULT_SAMPLES_DIR / "images")
    sampling = Sampling(max_tokens=max_tokens, temperature=0.0)
    return [
        Request(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
            (images[i % len(images)],),
            sampling,
        )
        for i, q in enumerate(QUESTIONS[i % len(QUESTIONS)] for i in range(n))
    ]


def rate(backend: HFBackend, batch: list[Request]) -> float:
    start = time.perf_counter()
    done = list(backend.generate(batch))
    assert len(done) == len(batch) and all(c.ok for c in done)
    return len(batch) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="llava")
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_tokens", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(
            TinyModelConfig(arch=args.arch, size=args.size, out=str(Path(tmp) / "m"))
        )
        backend = HFBackend(str(model), batch_size=1)
        work = requests(args.n, args.max_tokens)
        rate(backend, work[:4])  # warm-up
        sequential = rate(backend, work[: max(8, args.n // 4)])
        backend.batch_size = args.batch_size
        batched = rate(backend, work)
    ratio = batched / sequential
    print(f"batch 1: {sequential:.1f} req/s; batch {args.batch_size}: {batched:.1f} req/s")
    print(
        f"hf batch {args.batch_size} vs one at a time ({args.arch}-{args.size}): "
        f"ratio {ratio:.1f}x (target 6x)"
    )


if __name__ == "__main__":
    main()

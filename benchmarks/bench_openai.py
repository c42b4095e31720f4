"""Throughput of the `openai` backend: concurrency 32 against the sequential loop.

A stub OpenAI-compatible server (tests/openai_stub.py) answers every request after a fixed
100 ms, in a process of its own so that it does not compete with the client for the
interpreter lock. Each request carries one image, as evaluation requests do. With 100 ms
per request, the sequential loop can reach at most 10 requests/s and concurrency 32 at
most 320; the script prints how close the backend gets. It reports, it does not assert.

    .venv/bin/python benchmarks/bench_openai.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from openai_stub import stub_process  # noqa: E402

from pipeline.backends import Request  # noqa: E402
from pipeline.backends.openai_api import OpenAIBackend  # noqa: E402

IMAGE = REPO / "datasets" / "samples" / "images" / "sample_001.jpg"


def make_requests(n: int) -> list[Request]:
    parts = [{"type": "image"}, {"type": "text", "text": "What is in this image?"}]
    return [Request(messages=[{"role": "user", "content": parts}], images=(IMAGE,))] * n


def rate(base_url: str, concurrency: int, n: int) -> float:
    """Requests per second through one backend, failures counted as a broken run."""
    with OpenAIBackend("stub", base_url=base_url, concurrency=concurrency) as backend:
        list(backend.generate(make_requests(min(n, concurrency))))  # warm up connections
        start = time.perf_counter()
        failed = sum(not c.ok for c in backend.generate(make_requests(n)))
        elapsed = time.perf_counter() - start
    if failed:
        print(f"  warning: {failed} of {n} requests failed", file=sys.stderr)
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.1, help="server seconds per request")
    parser.add_argument("--sequential", type=int, default=30, help="requests at concurrency 1")
    parser.add_argument("--concurrent", type=int, default=640, help="requests at concurrency 32")
    args = parser.parse_args()

    with stub_process(delay=args.delay) as base_url:
        sequential = rate(base_url, 1, args.sequential)
        concurrent = rate(base_url, 32, args.concurrent)
    ideal = 32 / args.delay
    print(f"sequential (concurrency 1): {sequential:.1f} req/s over {args.sequential} requests")
    print(f"concurrency 32: {concurrent:.1f} req/s over {args.concurrent} requests")
    print(
        f"openai concurrency 32 vs sequential: ratio {concurrent / sequential:.1f}x (target 20x), "
        f"{concurrent:.0f} req/s = {concurrent / ideal:.0%} of ideal {ideal:.0f} (target 80%)"
    )


if __name__ == "__main__":
    main()

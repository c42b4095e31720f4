"""Record store: 10,000 records through the stage runner with an instant backend.

Prints records/s written, records/s for a fully cached rerun, peak RSS (targets: >= 2,000
records/s, < 1.5 GB), and the ratio against a reference-style store that re-reads its file
to check each key and opens the file for every append.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from pipeline.backends import Completion, Request
from pipeline.runner import Item, run_stage
from pipeline.store import RecordStore, record_key


class InstantBackend:
    name = model_id = "instant"

    def generate(self, requests):
        for i in range(len(requests)):
            yield Completion(i, "an answer of a typical length " * 8, None, 40, 60)

    def close(self) -> None:
        pass


def work(n: int) -> list[Item]:
    items = []
    for i in range(n):
        prompt = f"question {i} about image {i % 500}: " + "criteria text " * 40
        key = record_key(image=f"{i % 500:032x}", prompt=prompt, model="m", sampling={"t": 0})
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        ]
        items.append(Item(key, Request(messages), {"image": f"img{i % 500}.jpg", "i": i}))
    return items


def reference_store(path: Path, items: list[Item]) -> float:
    """The naive way: read the file to see whether a key exists, append with open/close."""
    start = time.perf_counter()
    for item in items:
        done = set()
        if path.exists():
            done = {json.loads(line)["key"] for line in path.open()}
        if item.key in done:
            continue
        with path.open("a") as f:
            f.write(json.dumps({"key": item.key, "text": "an answer " * 8}) + "\n")
    return len(items) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--reference_n", type=int, default=1_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "records.jsonl"
        start = time.perf_counter()
        items = work(args.n)
        with RecordStore(path) as store:
            run_stage("bench", items, InstantBackend(), store, progress=False)
        written = args.n / (time.perf_counter() - start)
        start = time.perf_counter()
        with RecordStore(path) as store:
            stats = run_stage("bench", work(args.n), None, store, progress=False)
        assert stats.cached == args.n
        cached = args.n / (time.perf_counter() - start)
        reference = reference_store(Path(tmp) / "ref.jsonl", items[: args.reference_n])
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"store {args.n} records: {written:,.0f} records/s written (target 2,000), "
        f"{cached:,.0f} records/s cached rerun, peak RSS {peak_mb:,.0f} MB (target < 1,500); "
        f"reference-style store {reference:,.0f} records/s over {args.reference_n}: "
        f"ratio {written / reference:.1f}x"
    )


if __name__ == "__main__":
    main()

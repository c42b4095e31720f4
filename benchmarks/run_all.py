"""`make bench`: run every benchmark in this folder and print one table of their results.

Each `bench_*.py` prints its own figures and ends with one summary line holding its ratio
against a reference-style baseline measured in the same run.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    here = Path(__file__).parent
    rows, failed = [], 0
    for script in sorted(here.glob("bench_*.py")):
        print(f"running {script.name} ...", flush=True)
        start = time.monotonic()
        run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
        seconds = time.monotonic() - start
        lines = [line for line in run.stdout.splitlines() if line.strip()]
        if run.returncode != 0 or not lines:
            failed += 1
            rows.append(
                (script.stem, f"FAILED (exit {run.returncode}): {run.stderr[-300:]}", seconds)
            )
        else:
            rows.append((script.stem, lines[-1], seconds))
    print("\n| benchmark | result | seconds |\n|---|---|---|")
    for name, result, seconds in rows:
        print(f"| {name} | {result} | {seconds:.0f} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

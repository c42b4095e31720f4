"""CRL training throughput: batched and padded vs the original code's batch of 1.

Both runs train the same LoRA on the same model (the `small` local LLaVA) and the same
templated CRL data, with the same effective batch: ours at `per_device_train_batch_size`
16, the reference style at 1 with 16 gradient-accumulation steps, as the original
train_SFT.py did. Each runs in its own process so peak memory is its own. Target >= 3x.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def one_run(data: str, model: str, out: str, batch: int, accumulation: int, steps: int) -> None:
    from commands.cli import main

    argv = ["train", "--config", str(REPO / "configs/train/crl.yaml"), "--data", data,
            "--model_name_or_path", model, "--output_dir", out, "--max_steps", str(steps),
            "--per_device_train_batch_size", str(batch), "--gradient_accumulation_steps",
            str(accumulation), "--gradient_checkpointing", "false", "--warmup_steps", "0",
            "--save_strategy", "no", "--logging_steps", "1000",
            "--disable_tqdm", "true"]  # fmt: skip
    assert main(argv) == 0
    seconds = json.loads((Path(out) / "macaroon.json").read_text())["seconds"]  # training alone
    samples = steps * batch * accumulation
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps({"samples_per_s": samples / seconds, "peak_mb": peak}))


def measure(data, model, tmp, batch, accumulation, steps) -> dict:
    command = [sys.executable, __file__, "--one", data, model, f"{tmp}/o{batch}",
               str(batch), str(accumulation), str(steps)]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=True)
    line = next(x for x in run.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--one", nargs=6, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    if args.one:
        data, model, out, batch, accumulation, steps = args.one
        return one_run(data, model, out, int(batch), int(accumulation), int(steps))
    sys.path.insert(0, str(REPO / "tests"))
    from train_data import save_templated

    from pipeline.tiny_model import TinyModelConfig, build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model = str(build_tiny_model(TinyModelConfig(size="small", out=f"{tmp}/model")))
        data = str(save_templated(Path(tmp) / "data"))
        ours = measure(data, model, tmp, args.batch, 1, args.steps)
        reference = measure(data, model, tmp, 1, args.batch, args.steps)
    ratio = ours["samples_per_s"] / reference["samples_per_s"]
    n = args.batch
    print(
        f"batch {n}: {ours['samples_per_s']:.1f} samples/s, peak RSS {ours['peak_mb']:.0f} MB; "
        f"batch 1 x {n} accumulation: {reference['samples_per_s']:.1f} samples/s, "
        f"peak RSS {reference['peak_mb']:.0f} MB"
    )
    print(
        f"CRL training, batch {n} vs 1 x {n} accumulation (llava-small): "
        f"ratio {ratio:.1f}x (target 3x)"
    )


if __name__ == "__main__":
    main()

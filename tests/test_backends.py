"""The same imagination run on hf, a real vLLM engine, and a real OpenAI-compatible server."""

import json
import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def images(sample_images):
    return sample_images("sample_001.jpg", "sample_004.jpg")


def imagine(model, images, out, *extra):
    argv = [sys.executable, "-m", "commands.cli", "imagine", "--model", str(model),
            "--images", str(images), "--out", str(out), "--question_temperature", "0",
            "--question_max_tokens", "12", "--response_max_tokens", "12",
            "--progress", "false", *extra]  # fmt: skip
    run = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    return run.stdout


def records(out, name):
    return {r["key"]: r for r in map(json.loads, (out / name).open())}


@pytest.fixture(scope="module")
def hf_run(tiny_model, images, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf")
    imagine(tiny_model("llava"), images, out, "--backend", "hf")
    return out


def same_as_hf(hf_out, out):
    for name in ("questions.jsonl", "responses.jsonl"):
        ours, theirs = records(out, name), records(hf_out, name)
        assert set(ours) == set(theirs)  # keys never depend on the backend
        assert all(r["status"] == "ok" for r in ours.values())
        # Greedy decoding of the same weights: the same text, request by request.
        assert {k: r["text"] for k, r in ours.items()} == {k: r["text"] for k, r in theirs.items()}


@pytest.mark.vllm
def test_vllm_engine_backend_matches_hf(tiny_model, images, hf_run, tmp_path):
    stdout = imagine(tiny_model("llava"), images, tmp_path, "--backend", "vllm")
    assert "dataset:" in stdout
    same_as_hf(hf_run, tmp_path)


@pytest.mark.vllm
def test_openai_backend_against_a_vllm_server(tiny_model, vllm_server, images, hf_run, tmp_path):
    # The model folder served by vLLM's OpenAI-compatible server on 127.0.0.1 (the demo's
    # test covers the server the backend starts by itself for a folder).
    server = vllm_server("llava")
    stdout = imagine(tiny_model("llava"), images, tmp_path, "--backend", "openai",
                     "--base_url", server.base_url)  # fmt: skip
    assert "dataset:" in stdout
    same_as_hf(hf_run, tmp_path)

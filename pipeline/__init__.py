"""Ground floor of MACAROON: config, criteria, tiny local models and the CLI.

Nothing here imports the stage packages (`imagination`, `trainers`, `evaluation`),
except `pipeline.cli`, which sits on top of everything and only dispatches.
"""

from pathlib import Path

# Repository root, for the bundled defaults (`datasets/`, `configs/`). An installed
# (non-editable) copy has no such folder; callers then pass explicit paths.
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CRITERIA_DIR = REPO_ROOT / "datasets" / "criteria"
DEFAULT_SAMPLES_DIR = REPO_ROOT / "datasets" / "samples"
DEFAULT_PROMPTS_DIR = REPO_ROOT / "datasets" / "prompts"

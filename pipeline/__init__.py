"""Ground floor of MACAROON: config, criteria, PIE reading, the record store and runner,
the backends, the judge, model-family facts (`pipeline.families`) and the tiny-model builder.

Nothing here imports a stage package (`imagination`, `trainers`, `evaluation`) or the
command layer (`commands`); tests/test_layout.py checks it.
"""

from pathlib import Path

# Repository root, for the bundled defaults (`datasets/`, `configs/`). An installed
# (non-editable) copy has no such folder; callers then pass explicit paths.
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CRITERIA_DIR = REPO_ROOT / "datasets" / "criteria"
DEFAULT_SAMPLES_DIR = REPO_ROOT / "datasets" / "samples"
DEFAULT_PROMPTS_DIR = REPO_ROOT / "datasets" / "prompts"

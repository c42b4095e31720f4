"""lmms-eval's entry point (`lmms_eval.models` in pyproject.toml): `--model macaroon`.

Kept apart from lmms_model.py so that lmms-eval, which reads every entry point when it
starts, imports only this small module until the model is asked for.
"""

from lmms_eval.models.registry_v2 import ModelManifest

MANIFEST = ModelManifest(model_id="macaroon", simple_class_path="evaluation.lmms_model.MacaroonLMM")

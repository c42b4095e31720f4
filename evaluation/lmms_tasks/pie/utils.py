"""lmms-eval's entry points for the PIE task (pie.yaml); the work is in evaluation/lmms_pie.py.

lmms-eval loads this file by its path, so the repository must be importable: install it
(`pip install -e .`, as `make setup` does) or put its root on PYTHONPATH.
"""

from evaluation.lmms_pie import (
    aggregate,
    aggregate_type,
    doc_to_text,
    doc_to_visual,
    process_docs,
    process_results,
)

__all__ = ["doc_to_text", "doc_to_visual", "process_docs", "process_results"]

aar_all = aggregate("aar_all")
aar = aggregate("aar")
aar_weighted_all = aggregate("aar_weighted_all")
aar_weighted = aggregate("aar_weighted")
align_rate_all_false_premise = aggregate_type("False Premise")
align_rate_all_unanswerable_questions = aggregate_type("Unanswerable Questions")
align_rate_all_subject_ambiguity = aggregate_type("Subject Ambiguity")
align_rate_all_subjective_interpretations = aggregate_type("Subjective Interpretations")
align_rate_all_unclear_user_background = aggregate_type("Unclear User Background")
align_rate_all_hidden_human_preferences = aggregate_type("Hidden Human Preferences")

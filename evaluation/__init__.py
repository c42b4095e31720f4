"""Evaluation on PIE: load, generate, judge, metrics and reports."""

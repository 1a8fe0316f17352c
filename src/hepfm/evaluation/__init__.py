"""Evaluation: classification metrics, plots and representation diagnostics."""

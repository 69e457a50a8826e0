"""Retrieval evaluation (issue 11): metrics, evaluation sets, runs as a user, tuning."""

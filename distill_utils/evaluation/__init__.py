"""Evaluation of distilled data: the student protocols, retrieval metrics, coreset baselines."""

"""Evaluation: frozen features, probes and the papers' ACC / FP / ASR metrics."""

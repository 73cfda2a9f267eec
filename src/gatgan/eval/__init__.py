"""Evaluation and monitoring utilities (representation alignment scores, ...)."""

"""Evaluation: metrics, embedding, matching, score normalisation, drivers and reports."""

"""Practical copy detection: a persistent reference index, search, dedup, calibration."""

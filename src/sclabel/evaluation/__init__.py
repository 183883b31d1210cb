"""Metrics, calibration, plots and the report folder."""

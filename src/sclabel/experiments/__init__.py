"""Experiments that regenerate a study's tables on any dataset (`sclabel experiment ...`)."""

from sclabel.experiments.disease import SECTIONS, DiseaseResult, run_disease_experiment

__all__ = ["SECTIONS", "DiseaseResult", "run_disease_experiment"]

"""Experiments that regenerate a study's tables on any dataset (`sclabel experiment ...`)."""

from sclabel.studies.disease.run import SECTIONS, DiseaseResult, run_disease_experiment

__all__ = ["SECTIONS", "DiseaseResult", "run_disease_experiment"]

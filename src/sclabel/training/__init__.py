"""Training: one loop for every family (loop.py) and the AnnData-level `train` (api.py)."""

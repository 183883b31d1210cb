"""Everything before a tensor exists: reading, genes, normalization, splits, batches."""

"""Stage 2, the analysis and the rewrite: the graph model (`graph`), the edit vocabulary
(`channels`), the per-op rules (`rules`), grouping (`analysis`), the rewrite and the
masking oracle (`rewrite`), and cost (`metrics`)."""

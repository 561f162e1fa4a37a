"""Keras `fit` and what surrounds it: the backend and its settings, batches, BatchNorm
statistics, per-epoch checkpoints, debug modes and timings. Never imports MLflow: records
leave through the Keras callbacks a job passes in."""

"""Sweeps: the MLflow parent run around a multirun (`parent_run`, a Hydra callback), its
children's records (`records`), what a finished sweep shows (`summary`), and the Optuna
search (`search`)."""

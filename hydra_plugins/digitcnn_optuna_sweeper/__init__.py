"""digitcnn's Optuna sweeper, where Hydra finds sweepers: the `hydra_plugins` package."""

"""Hyperparameter search on Optuna, as a Hydra sweeper with pruning.

- space: `hydra.sweeper.params` (Hydra's override syntax) as Optuna distributions;
- storage: the study's database, reached by every job;
- sweeper: asks the study for trials, launches them, tells it their ends (`OptunaSearch`);
- trial: a job's link to its trial; pruning: the Keras callback that reports each epoch;
- report: the figures and tables a finished search logs on its parent run.
"""

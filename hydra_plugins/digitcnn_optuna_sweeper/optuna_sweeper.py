"""The Hydra sweeper `hydra/sweeper=optuna` (conf/hydra/sweeper/optuna.yaml): an Optuna search
with pruning, on the current Optuna. The work is done in digitcnn.sweeps.search; this module stays
light because Hydra imports every plugin module whenever it starts."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        from digitcnn.sweeps.search.sweeper import OptunaSearch

        self._search = OptunaSearch(**settings)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self._search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self._search.sweep(arguments)

"""Train one model, or sweep many: `python -m digitcnn.run [-m] [overrides]`."""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from digitcnn import paths
from digitcnn.config import register_configs
from digitcnn.errors import InputError

register_configs()
log = logging.getLogger("digitcnn")


@hydra.main(config_path=str(paths.config_dir()), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Hydra's entry point; the returned validation accuracy is what sweepers optimise."""
    from digitcnn.job import run_job  # after Hydra has parsed the command line: --help stays fast

    try:
        return run_job(cfg)
    except InputError as exc:
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN or hydra_cfg.verbose:
            raise  # a sweep records the failed job; hydra.verbose=true shows the traceback
        log.error("error: %s", exc)
        sys.exit(2)


if __name__ == "__main__":
    main()

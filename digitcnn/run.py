"""Train one model, or sweep many: `python -m digitcnn.run [-m] [overrides]`."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from digitcnn import paths
from digitcnn.config import register_configs

register_configs()


@hydra.main(config_path=str(paths.config_dir()), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Hydra's entry point; the returned validation accuracy is what sweepers optimise."""
    from digitcnn.job import run_job  # after Hydra has parsed the command line: --help stays fast

    return run_job(cfg)


if __name__ == "__main__":
    main()

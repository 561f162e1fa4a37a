"""The Hydra launchers `hydra/launcher=submitit_slurm` and `submitit_local` as digitcnn runs them
(conf/hydra/launcher/): hydra-submitit-launcher's, whose jobs stop cleanly on Slurm's warning,
are requeued and continue their runs. The work is done in digitcnn.sweeps.slurm; this module
stays light because Hydra imports every plugin module whenever it starts, and defines nothing
without digitcnn's 'slurm' extra (the launchers' config then says which extra to install)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher as _plugin
except ImportError:  # the 'slurm' extra is not installed
    _plugin = None


class _ContinuedJobs:
    """What digitcnn changes in a submitit launcher: its jobs (`__call__`, on a node) and the
    wait for them (`launch`, in the sweep's process)."""

    def __call__(self, *args: Any) -> Any:
        from digitcnn.sweeps.slurm import run_in_job

        return run_in_job(super().__call__, *args)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        from digitcnn.sweeps.slurm import launch

        return launch(self, super().launch, job_overrides, initial_job_idx)


if _plugin is not None:

    class SlurmLauncher(_ContinuedJobs, _plugin.SlurmLauncher):
        pass

    class LocalLauncher(_ContinuedJobs, _plugin.LocalLauncher):
        pass

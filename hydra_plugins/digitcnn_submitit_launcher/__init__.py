"""digitcnn's submitit launchers (Slurm, local), where Hydra finds launchers."""

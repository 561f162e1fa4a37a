"""What every stage stands on: the typed config, errors, paths, whole files on disk, stop
signals, process set-up, the optional extras, and the locks and checks around output folders.
Imports nothing from the other stages."""

"""Everything MLflow. Training never imports MLflow; it gets `EpochMetricsLogger` as a Keras
callback and hands its records to a recorder.

- describe: what describes a run (redaction, flattened config, versions, git state), no MLflow;
- store: where runs are recorded, its creation and checks;
- runs: one run's lifecycle and what it writes (`Recorder`);
- recording: a single run's recorder in a second process, so that MLflow's imports and calls
  overlap the training process's (see `RecorderProcess`); service: that process's side;
- callback: the per-epoch Keras callback; files: artifacts written to a folder;
- resume: the config and checkpoint a resumed or repeated run starts from;
- ended_early: the one line a run that could not finish leaves its user.

A sweep's records (its parent run and children) are in `digitcnn.sweeps.records`.

Names are imported from their module on first use: `from digitcnn.tracking import redact`
does not import MLflow (~1.5 s), `from digitcnn.tracking import Recorder` does.
"""

from importlib import import_module

_HOMES = {
    "describe": (
        "flatten",
        "git_state",
        "library_versions",
        "model_requirements",
        "redact",
    ),
    "store": (
        "Store",
        "client_for",
        "import_store_modules",
        "preflight",
        "tracking_client",
    ),
    "runs": ("Recorder", "tracked_run"),
    "callback": ("EpochMetricsLogger",),
    "recording": ("RecorderProcess",),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # once found, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

"""Everything MLflow. Training never imports this package; it gets `EpochMetricsLogger` as a
Keras callback.

- store: where runs are recorded, its checks, redaction, versions and git state;
- runs: one run's lifecycle and what it writes;
- sweeps: a sweep's parent run, its children, failed jobs and the champion alias.
"""

from digitcnn.tracking.runs import EpochMetricsLogger, Recorder, tracked_run
from digitcnn.tracking.store import (
    Store,
    client_for,
    flatten,
    git_state,
    import_store_modules,
    library_versions,
    model_requirements,
    preflight,
    redact,
    tracking_client,
)
from digitcnn.tracking.sweeps import (
    CHAMPION,
    earlier_attempt,
    end_parent_run,
    find_parent_run,
    has_child,
    open_parent_run,
    record_failed_run,
    reopen_parent_run,
    set_champion,
    supersede,
    sweep_records,
)

__all__ = [
    "CHAMPION",
    "EpochMetricsLogger",
    "Recorder",
    "Store",
    "client_for",
    "earlier_attempt",
    "end_parent_run",
    "find_parent_run",
    "flatten",
    "git_state",
    "has_child",
    "import_store_modules",
    "library_versions",
    "model_requirements",
    "open_parent_run",
    "preflight",
    "record_failed_run",
    "redact",
    "reopen_parent_run",
    "set_champion",
    "supersede",
    "sweep_records",
    "tracked_run",
    "tracking_client",
]

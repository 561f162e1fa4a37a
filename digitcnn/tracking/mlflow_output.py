"""What MLflow prints on its own (`eprint`: "Successfully registered model 'digitcnn'.",
"Created version '3' …"), which would reach a sweep's console without the job's `[job N] `
and in a format of MLflow's. Inside `through_log()` it goes through digitcnn's logger instead:
the registration lines are dropped (the caller says what it registered, in digitcnn's
words) and any other line is passed on as a warning, so nothing MLflow says is lost. In the
recorder process digitcnn's log records travel to the training process, which prefixes them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Iterator

log = logging.getLogger(__name__)

# MLflow 3's words while it registers a model (mlflow.tracking._model_registry.fluent).
REGISTRATION_CHATTER = re.compile(
    r"^(Successfully registered model |Registered model .* already exists|Created version )"
)


@contextlib.contextmanager
def through_log() -> Iterator[None]:
    """MLflow's printed lines within, as digitcnn log records (see the module's text)."""
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):  # MLflow's stream writes to sys.stderr of now
            yield
    finally:
        for line in said.getvalue().splitlines():
            if line.strip() and not REGISTRATION_CHATTER.match(line):
                log.warning("%s", line)

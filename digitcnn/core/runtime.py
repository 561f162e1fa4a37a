"""Process-level set-up: a quiet start for TensorFlow and MLflow, and nothing else."""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import import_module


def mlflow_defaults() -> None:
    """No progress bars from MLflow's artifact transfers, no run URL printed (it would carry
    the credentials of a tracking URI), and short HTTP retries: a call to a tracking server
    that is away fails in seconds, and digitcnn's recorder decides how long to wait for it
    (`tracking.outage_limit_seconds`). A user's own settings win."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    # The system metrics' thread says when it starts and stops, and stops quietly when the
    # server is away (the run's own records say so once): only its errors are shown.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)


_SECRET_SETTING = re.compile(
    r"""(\w*(?:PASSWORD|SECRET|TOKEN)\w*['"]?\s*[:=]\s*)(?:'[^']*'|"[^"]*"|[^\s,}]+)""", re.I
)


class SecretsHidden(logging.Filter):
    """Masks the value of every `...PASSWORD`/`...SECRET`/`...TOKEN` setting in a log line:
    the Ray launcher logs the `ray.init` settings, whose runtime environment carries the
    tracking server's credentials to the workers."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        hidden = _SECRET_SETTING.sub(r"\1'***'", message)
        if hidden != message:
            record.msg, record.args = hidden, None
        return True


def hide_secrets_in_logs(*loggers: str) -> None:
    for name in loggers:
        logging.getLogger(name).addFilter(SecretsHidden())


@contextmanager
def native_stderr_hidden() -> Iterator[None]:
    """Hide what native code writes to file descriptor 2 within, unless it fails.

    TensorFlow's C++ logger writes its oneDNN/CUDA start-up notices straight to the descriptor,
    whatever `TF_CPP_MIN_LOG_LEVEL` says, so stderr is pointed at a temporary file; if the
    block raises, what was written is replayed. `DIGITCNN_VERBOSE_IMPORT=1` shows it all.
    """
    if os.environ.get("DIGITCNN_VERBOSE_IMPORT"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def import_keras_quietly() -> None:
    """Import Keras (and its backend) with the C++ start-up notices hidden."""
    if "keras" in sys.modules:
        return
    with native_stderr_hidden():
        import_module("keras")
        if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
            # Probing devices prints the CUDA notices now; threads stay configurable.
            import_module("tensorflow").config.list_physical_devices()

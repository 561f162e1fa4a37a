"""Process-level set-up before Keras is imported: a quiet TensorFlow start."""

from __future__ import annotations

import os
import sys
import tempfile
from importlib import import_module


def import_keras_quietly() -> None:
    """Import Keras (and its backend) with the C++ start-up notices hidden.

    TensorFlow's native logger writes oneDNN/CUDA notices straight to file descriptor 2,
    whatever `TF_CPP_MIN_LOG_LEVEL` says, so stderr is pointed at a temporary file for the import;
    if the import fails, what was written is replayed.
    """
    if "keras" in sys.modules or os.environ.get("DIGITCNN_VERBOSE_IMPORT"):
        import_module("keras")
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import_module("keras")
            if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
                # Probing devices prints the CUDA notices now; threads stay configurable.
                import_module("tensorflow").config.list_physical_devices()
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)

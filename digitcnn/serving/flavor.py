"""The flavor the model is logged with: MLflow's pyfunc, saved without being loaded back.

`mlflow.pyfunc.log_model(input_example=...)` saves the model, then loads it again and runs the
example through it to check that it can be served. In the recorder process that means
importing Keras and TensorFlow a second time, and loading the model: 4-5 s of CPU per run on a
2-core machine, taken while the training process imports and compiles (docs/performance.md).
A failure there is only a warning in MLflow's log. digitcnn logs through `Model.log` with this
module as the flavor instead, which saves exactly what `pyfunc.log_model` saves (the same
MLmodel, signature, input example and serving example) and skips that load; the suite loads
and serves logged models itself (tests/test_use.py).
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc

NAME = "pyfunc.ModelFromCode"  # as `pyfunc.log_model` names a model logged from code


def save_model(path: str, mlflow_model: Any, validate_serving_input: bool = False, **kwargs: Any):
    """`mlflow.pyfunc.save_model`; `validate_serving_input` is `Model.log`'s, not pyfunc's."""
    mlflow.pyfunc.save_model(path=path, mlflow_model=mlflow_model, **kwargs)

"""The code MLflow runs to rebuild the logged model ("models from code").

`mlflow.pyfunc.log_model(python_model=<this file>)` stores this script with the model instead
of a pickled Python object; loading the model runs it, with the package code logged beside it
on the path. The Keras weights and `pixel_max` come from the model's artifacts and config.
"""

import mlflow

from digitcnn.serving.pyfunc import DigitClassifier

mlflow.models.set_model(DigitClassifier())

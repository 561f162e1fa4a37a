"""The logged model: the pyfunc MLflow loads (`pyfunc`), the script that rebuilds it
(`logged_model`), and the preparation of users' images for it (`image_input`).

`DigitClassifier` is also importable from here, where models logged before the stage folders
look for it (their script says `from digitcnn.serving import DigitClassifier`)."""


def __getattr__(name: str):
    if name == "DigitClassifier":  # imported on use: image_input needs no MLflow
        from digitcnn.serving.pyfunc import DigitClassifier

        return DigitClassifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

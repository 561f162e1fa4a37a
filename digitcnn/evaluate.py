"""Test a logged model on a dataset and record the result as an MLflow run.

    python -m digitcnn.evaluate model=runs:/<run id>/model                 # MNIST's test set
    python -m digitcnn.evaluate model=models:/digitcnn@champion dataset=images \\
        dataset.path=/data/other_digits.npz

Who registered the model and from which run is said first; from a server with users, a model
by someone else loads only with `trust=[THEIR_NAME]` (see digitcnn.team.provenance).
The evaluation run records accuracy, loss and macro F1 (also on the logged model's page),
the confusion matrix, the misclassified images and the per-class report, with tags naming
the model and the run that trained it. A dataset whose images the model cannot take is one
line, before anything is recorded.
"""

from __future__ import annotations

import logging
import sys

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from digitcnn.core import paths
from digitcnn.core.config import EvaluateConfig, register_configs, to_typed
from digitcnn.core.errors import InputError
from digitcnn.core.runtime import import_keras_quietly
from digitcnn.training.backends import select_backend

register_configs()
log = logging.getLogger("digitcnn")


def _typed(cfg: DictConfig) -> EvaluateConfig:
    if OmegaConf.is_missing(cfg, "model_uri"):  # the user's word for it is model=
        raise InputError("model is required: model=runs:/<run id>/model or models:/<name>@<alias>")
    return to_typed(cfg)


def evaluate_model(cfg: DictConfig) -> dict[str, float]:
    typed = _typed(cfg)
    select_backend(typed.backend)

    from digitcnn import tracking
    from digitcnn.data import load_dataset
    from digitcnn.evaluation import figures
    from digitcnn.evaluation.metrics import evaluate
    from digitcnn.serving.loading import load_logged_model
    from digitcnn.serving.pyfunc import input_image_shape
    from digitcnn.team import provenance

    store = tracking.preflight(typed.tracking)
    found = provenance.check(typed.model_uri, typed.tracking.uri, typed.trust, "trust=[{}]")
    if found:
        log.info("model     %s", found.line())
    import_keras_quietly()  # only for a model that will load: a refusal costs no Keras
    model = load_logged_model(typed.model_uri, found.load_uri if found else None)
    data = load_dataset(typed.dataset, typed.seed)
    images = data.x_test[..., 0] * data.pixel_max  # raw pixels, as the logged model takes them
    wanted = input_image_shape(model)
    if wanted is not None and wanted != images.shape[1:]:
        raise InputError(
            f"model={typed.model_uri!r} takes {'x'.join(map(str, wanted))} images; dataset "
            f"{data.name!r} ({data.source}) has {'x'.join(map(str, images.shape[1:]))}"
        )
    probabilities = np.asarray(model.predict(images))
    if probabilities.shape[1] < data.num_classes:
        raise InputError(
            f"model={typed.model_uri!r} answers {probabilities.shape[1]} classes; dataset "
            f"{data.name!r} has labels up to {data.num_classes - 1}"
        )
    scores = evaluate(probabilities, data.y_test)
    tags = {
        "evaluation.model": typed.model_uri,
        "evaluation.source_run_id": model.metadata.run_id or "",
        "evaluation.model_id": model.metadata.model_id or "",
        "evaluation.model_author": (found.author if found else None) or "",
        "dataset.digest": data.digest,
        "command": tracking.redact(" ".join(["digitcnn.evaluate", *sys.argv[1:]])),
        **{label: "true" for label in typed.tags},
    }
    name = f"evaluate {typed.model_uri} on {data.name}"
    with tracking.tracked_run(store, name, tags) as recorder:
        params = tracking.flatten({"dataset": OmegaConf.to_container(cfg.dataset, resolve=True)})
        recorder.log_params({**params, "model": typed.model_uri, "backend": typed.backend})
        # Linked to the logged model's page where the user may write to it (their own)
        linked = tags["evaluation.model_id"] if provenance.mine(found) else ""
        recorder.log_metrics(scores.metrics(), model_id=linked or None)
        recorder.log_dataset(data.x_test, data.y_test, data.name, data.digest, data.source)
        recorder.log_files(
            {
                "confusion_matrix.png": figures.confusion_figure(scores.confusion, scores.accuracy),
                "misclassified.png": figures.misclassified_figure(
                    data.x_test, data.y_test, scores.predicted
                ),
                "classification_report.json": scores.report,
            }
        )
    log.info(
        "%s: accuracy %.4f  loss %.4f  macro F1 %.4f  (%d images of %s)",
        typed.model_uri,
        scores.accuracy,
        scores.loss,
        scores.macro_f1,
        len(data.y_test),
        data.source,
    )
    log.info("evaluation run %s (trained in run %s)", recorder.run_id, model.metadata.run_id)
    return scores.metrics()


@hydra.main(config_path=str(paths.config_dir()), config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        evaluate_model(cfg)
    except InputError as exc:
        if HydraConfig.get().verbose:
            raise
        log.error("error: %s", exc)
        sys.exit(2)


def cli() -> None:
    """The command: `model=URI` is this command's key, not training's config group."""
    sys.argv[1:] = [
        f"model_uri={arg.removeprefix('model=')}" if arg.startswith("model=") else arg
        for arg in sys.argv[1:]
    ]
    from digitcnn.core.hydra_errors import hydra_errors_raised, one_line

    try:
        with hydra_errors_raised():
            main()
    except Exception as exc:  # Hydra's refusal of the command line: one line
        refused = one_line(exc)
        if refused is None:
            raise
        print(f"error: {refused}".replace("model_uri", "model"), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()

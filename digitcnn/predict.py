"""Predict digits in image files with a logged model.

    python -m digitcnn.predict model=runs:/<run id>/model inputs=path/to/folder
    python -m digitcnn.predict model=models:/digitcnn@champion inputs=a.png,b.jpg output=json

`model` is an MLflow model URI (`runs:/…`, `models:/NAME@alias`, `models:/NAME/VERSION`) or a
local model folder; `inputs` image files and/or folders (comma-separated). Each image is
prepared as MNIST was (see digitcnn.serving.image_input). Files that are not images, images
over digitcnn.serving.image_input.MAX_PIXELS pixels and blank images are reported and skipped.
`tracking_uri` defaults to MLFLOW_TRACKING_URI, else the project's SQLite store. Who
registered the model and from which run is said first; from a server with users, a model by
someone else loads only with `trust=THEIR_NAME` (comma-separated; `*` for anyone): see
digitcnn.team.provenance.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digitcnn.core import paths
from digitcnn.serving.image_input import NoInkError, NotAnImageError, load_image, to_mnist

USAGE = (
    "usage: python -m digitcnn.predict model=<runs:/ID/model | models:/NAME@ALIAS | folder> "
    "inputs=<files or folders, comma-separated> [output=table|json] [tracking_uri=URI] "
    "[trust=USER,...]"
)
KEYS = ("model", "inputs", "output", "tracking_uri", "trust")


@dataclass(frozen=True)
class Prediction:
    file: str
    digit: int | None = None
    confidence: float | None = None
    probabilities: list[float] | None = None
    error: str | None = None


def parse_args(argv: list[str]) -> dict[str, str]:
    """key=value arguments (and --json) -> options; a clear error for anything else."""
    options = {"output": "table"}
    for arg in argv:
        if arg == "--json":
            options["output"] = "json"
            continue
        key, sep, value = arg.partition("=")
        if not sep or key not in KEYS:
            raise SystemExit(
                f"error: unknown argument {arg!r}; allowed keys: {', '.join(KEYS)}\n{USAGE}"
            )
        options[key] = value
    for key in ("model", "inputs"):
        if not options.get(key):
            raise SystemExit(f"error: {key}= is required\n{USAGE}")
    if options["output"] not in ("table", "json"):
        raise SystemExit(f"error: output={options['output']!r} is not allowed: table or json")
    return options


def image_files(inputs: str) -> list[Path]:
    """The files named, and the entries directly inside the folders named (their subfolders
    left out), in sorted order. Special files (a FIFO, a socket, a device) are kept: they
    are reported as skipped, never opened."""
    files: list[Path] = []
    for item in filter(None, (part.strip() for part in inputs.split(","))):
        path = Path(item).expanduser()
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if not p.is_dir()))
        elif path.exists() or path.is_symlink():
            files.append(path)
        else:
            raise SystemExit(f"error: inputs={item!r} does not exist")
    return files


def not_a_regular_file(path: Path) -> str | None:
    """Why `path` cannot be read as an image file without risk (reading a FIFO waits for a
    writer forever), or None for a regular file."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:  # a link to nothing, a file removed meanwhile
        return f"cannot be read ({exc.strerror})"
    if stat.S_ISREG(mode):
        return None
    kinds = {
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISSOCK: "a socket",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
    }
    kind = next((name for test, name in kinds.items() if test(mode)), "a special file")
    return f"not a regular file ({kind})"


def load_model(uri: str, tracking_uri: str | None, trust: list[str] = ()):
    """The pyfunc model at `uri`, and the (height, width) its signature takes; who made it is
    said first (on stderr), and a model by someone not trusted is refused."""
    from digitcnn.core.errors import InputError
    from digitcnn.core.runtime import import_keras_quietly, mlflow_defaults
    from digitcnn.team import provenance

    mlflow_defaults()
    import mlflow

    tracking_uri = (
        tracking_uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{paths.project_root()}/mlruns/mlflow.db"
    )
    mlflow.set_tracking_uri(tracking_uri)
    if Path(uri).expanduser().is_dir():
        uri = str(Path(uri).expanduser().resolve())
    from digitcnn.serving.loading import load_logged_model

    try:
        found = provenance.check(uri, tracking_uri, list(trust))
        if found:
            print(found.line(), file=sys.stderr)
        import_keras_quietly()  # only for a model that will load: a refusal costs no Keras
        # what was checked is what loads: the logged model the reference resolved to
        model = load_logged_model(uri, found.load_uri if found else uri)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    from digitcnn.serving.pyfunc import input_image_shape

    return model, input_image_shape(model)


def predict_files(model, shape: tuple[int, int], files: list[Path]) -> list[Prediction]:
    """One prediction per readable image (in one batch), an error entry per other file."""
    if shape != (28, 28):
        raise SystemExit(
            f"error: this model takes {shape[0]}x{shape[1]} images; the predict "
            "command prepares 28x28 MNIST-style ones (train on dataset=mnist)"
        )
    images, names, results = [], [], {}
    for path in files:
        special = not_a_regular_file(path)
        if special:
            results[str(path)] = Prediction(str(path), error=special)
            continue
        try:
            images.append(to_mnist(load_image(path)))
            names.append(str(path))
        except NotAnImageError as exc:
            results[str(path)] = Prediction(str(path), error=str(exc).split(": ", 1)[1])
        except NoInkError as exc:
            results[str(path)] = Prediction(str(path), error=str(exc))
    if images:
        probabilities = np.asarray(model.predict(np.stack(images).astype(np.float32)))
        for name, p in zip(names, probabilities, strict=True):
            digit = int(p.argmax())
            results[name] = Prediction(name, digit, float(p[digit]), [float(v) for v in p])
    return [results[str(path)] for path in files]


def render(predictions: list[Prediction], output: str) -> str:
    if output == "json":
        return json.dumps(
            [{k: v for k, v in vars(p).items() if v is not None} for p in predictions], indent=2
        )
    width = max([len(p.file) for p in predictions] + [4])
    lines = [f"{'file':<{width}}  digit  confidence"]
    for p in predictions:
        if p.error:
            lines.append(f"{p.file:<{width}}  skipped: {p.error}")
        else:
            lines.append(f"{p.file:<{width}}  {p.digit:>5}  {p.confidence:>10.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    files = image_files(options["inputs"])
    if not files:
        raise SystemExit(f"error: no files in inputs={options['inputs']!r}")
    trust = [name.strip() for name in options.get("trust", "").split(",") if name.strip()]
    model, shape = load_model(options["model"], options.get("tracking_uri"), trust)
    predictions = predict_files(model, shape, files)
    print(render(predictions, options["output"]))
    skipped = [p for p in predictions if p.error]
    if skipped:
        print(f"{len(skipped)} of {len(predictions)} files skipped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

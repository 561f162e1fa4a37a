"""The package's rooms: one folder per stage, each importing only the stages below it."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "digitcnn"
# Lowest first: a module may import its own stage and those before it, never one after.
STAGES = [
    "core",
    "data",
    "models",
    "evaluation",  # scores and figures: numpy, scikit-learn, matplotlib; training reuses them
    "training",
    "serving",
    "tracking",
    "sweeps",
    "team",
    "",  # the commands at the top: run, job, evaluate, predict, team_server
]
NO_MLFLOW = {"core", "data", "models", "evaluation", "training"}


def _stage(module: str) -> str:
    """`digitcnn.training.fit` -> "training"; a top-level module -> ""."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (PACKAGE / parts[-1]).is_dir() else ""


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if "conf" in path.relative_to(PACKAGE).parts:
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name != "digitcnn":  # the package's root holds a docstring, no code
            found[name] = path
    return found


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_every_module_is_in_a_known_stage():
    unknown = {m for m in _modules() if _stage(m) not in STAGES}
    assert not unknown, f"modules outside the stages {STAGES}: {sorted(unknown)}"


def test_no_module_imports_a_later_stage():
    modules = _modules()
    later = []
    for name, path in modules.items():
        rank = STAGES.index(_stage(name))
        for imported in _imports(path):
            if imported in modules and STAGES.index(_stage(imported)) > rank:
                later.append(f"{name} imports {imported}")
    assert not later, "\n".join(sorted(later))


def test_the_stages_below_serving_never_import_mlflow():
    """Training, and what it stands on, knows nothing of MLflow: records leave through
    callbacks a job hands in."""
    offenders = [
        name
        for name, path in _modules().items()
        if _stage(name) in NO_MLFLOW
        and any(i == "mlflow" or i.startswith("mlflow.") for i in _imports(path))
    ]
    assert not offenders


def test_no_two_modules_share_a_file_name():
    names = Counter(p.name for p in _modules().values() if p.name != "__init__.py")
    assert not [name for name, count in names.items() if count > 1]


def test_the_commands_users_type_are_at_the_top():
    for command in ("run", "evaluate", "predict", "team_server"):
        assert (PACKAGE / f"{command}.py").is_file()


def test_no_two_modules_import_each_other():
    """Arrows run one way: a module that imports another is never imported by it (at the top
    or inside a function: a late import hides a cycle, it does not remove it)."""
    modules = _modules()
    imports = {name: {i for i in _imports(path) if i in modules} for name, path in modules.items()}
    both = sorted(
        f"{a} <-> {b}" for a, found in imports.items() for b in found if a < b and a in imports[b]
    )
    assert not both, both

"""The pre-commit hooks (ruff's lint and format checks) that the README's set-up enables."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hook_env(tmp_path_factory) -> dict[str, str]:
    """The environment of a developer's shell: the project's tools on PATH, and pre-commit's
    hook environments under a throwaway home."""
    home = tmp_path_factory.mktemp("pre-commit-home")
    return {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(home),
        "PRE_COMMIT_HOME": str(home / "cache"),
    }


@pytest.fixture(scope="module")
def pre_commit(hook_env):
    """`pre-commit ARGS` in a folder."""

    def run(folder: Path, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pre_commit", *args],
            cwd=folder, env=hook_env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip

    return run


def test_the_code_base_passes_its_hooks(pre_commit):
    proc = pre_commit(REPO, "run", "--all-files")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "ruff check" in proc.stdout and "ruff format" in proc.stdout


def test_the_hooks_stop_a_commit_with_lint_or_format_errors(pre_commit, hook_env, tmp_path):
    for name in (".pre-commit-config.yaml", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / "bad.py").write_text("import os\nx = {'a':1}\n")  # unused import, unformatted
    git = {"cwd": tmp_path, "check": True, "capture_output": True}
    subprocess.run(["git", "init", "-q"], **git)
    subprocess.run(["git", "add", "."], **git)
    assert pre_commit(tmp_path, "install").returncode == 0
    commit = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "bad"],
        cwd=tmp_path, env=hook_env, capture_output=True, text=True,
    )  # fmt: skip
    said = commit.stdout + commit.stderr
    assert commit.returncode != 0  # the hook refused it
    assert "F401" in said and "1 file would be reformatted" in said, said

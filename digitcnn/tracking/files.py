"""A run's small artifacts (figures, frames, dicts, text) written to a folder, for logging."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write_files(files: Mapping[str, Any], folder: Path) -> None:
    """{name: content} as files in `folder` (a name may hold a subfolder): a figure (PNG,
    then closed), a frame (CSV), a dict (JSON) or text."""
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)  # "config/config.yaml"
        if hasattr(content, "savefig"):
            import matplotlib.pyplot as plt

            content.savefig(path, dpi=110)
            plt.close(content)
        elif hasattr(content, "to_csv"):  # a pandas frame (pandas stays unimported till then)
            content.to_csv(path)
        elif isinstance(content, dict):
            path.write_text(json.dumps(content, indent=2))
        else:
            path.write_text(str(content))

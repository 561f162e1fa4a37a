"""Processes that open one study database at once, as separate searches starting together do.

A module of its own, importing nothing at its top: each opener is a new interpreter (`spawn`)
that imports the module its target lives in, and the test modules import the suite's
fixtures, MLflow and Optuna (1.7 CPU-seconds each, measured) before an opener could start.
"""

from __future__ import annotations


def _open_study_storage(url: str, start, said) -> None:
    """In a process of its own: wait for the others, then open the study database at `url`."""
    from digitcnn.sweeps.search.storage import open_storage

    start.wait()
    try:
        open_storage(url)
        said.put("opened")
    except Exception as exc:  # what the process would have died of
        said.put(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")


def open_all_at_once(url: str, processes: int = 4) -> list[str]:
    """What each of `processes` new interpreters said when opening `url` at the same moment."""
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")  # fresh interpreters, like separate searches
    start, said = spawn.Barrier(processes), spawn.Queue()
    openers = [
        spawn.Process(target=_open_study_storage, args=(url, start, said)) for _ in range(processes)
    ]
    for opener in openers:
        opener.start()
    answers = [said.get(timeout=120) for _ in openers]
    for opener in openers:
        opener.join(timeout=60)
    return answers

"""The MLflow UI as a person uses it: a real `mlflow ui` and headless Chromium (Playwright).

Screenshots land in test-output/screenshots/. Without Chromium the test is skipped, except
under CI (CI=true), where .ci/run installs it and a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.conftest import REPO, cli_env, client_for, failure_report, free_port, run_cli, serving

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = REPO / "test-output" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if CHROMIUM is None:
    if os.environ.get("CI"):
        raise RuntimeError("Chromium is missing under CI: .ci/run should have installed it")
    pytest.skip(
        "no Chromium here (apt-get install chromium); CI installs it", allow_module_level=True
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store with one finished run and one finished two-job sweep."""
    root = tmp_path_factory.mktemp("ui")
    for args in (("model.dropout=0.3",), ("-m", "model.dropout=0.1,0.2")):
        proc = run_cli(
            root,
            *args,
            "experiment=quick",
            "dataset.val_size=180",
            "tracking.experiment=ui",
            "tracking.system_metrics_seconds=1",  # a quick run lasts less than the default 10 s
        )
        assert proc.returncode == 0, failure_report(proc)
    client = client_for(root)
    experiment = client.get_experiment_by_name("ui")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.info.run_name.startswith("sweep "))
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    (single,) = [r for r in runs if r not in children and r is not parent]
    assert len(children) == 2
    return (
        root,
        experiment.experiment_id,
        {"single": single, "parent": parent, "children": children},
    )


@pytest.fixture(scope="module")
def ui(store):
    root, *_ = store
    url = f"http://127.0.0.1:{free_port()}"
    args = [
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        f"sqlite:///{root}/mlruns/mlflow.db",
        "--host",
        "127.0.0.1",
        "--port",
        url.rsplit(":", 1)[1],
    ]
    with serving(args, cli_env(root), f"{url}/health"):
        yield url


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def test_experiment_lists_runs_and_the_sweep_nests_its_children(ui, store, page):
    _, experiment_id, runs = store
    page.goto(f"{ui}/#/experiments/{experiment_id}/runs")
    parent_name = runs["parent"].info.run_name
    page.get_by_text(parent_name).wait_for()
    page.get_by_text(runs["single"].info.run_name).wait_for()
    page.screenshot(path=SHOTS / "runs.png")
    children = [c.info.run_name for c in runs["children"]]
    # Children are folded under the parent until it is expanded.
    assert page.get_by_text(children[0], exact=True).count() == 0
    row = page.locator("[role=row]", has_text=parent_name).first
    row.locator("button[data-component-id*='runnamecellrenderer']").click()
    for child in children:
        page.get_by_text(child, exact=True).wait_for()
    page.screenshot(path=SHOTS / "sweep-expanded.png")


def test_run_page_shows_metric_and_param(ui, store, page):
    _, experiment_id, runs = store
    run = runs["single"]
    page.goto(f"{ui}/#/experiments/{experiment_id}/runs/{run.info.run_id}")
    page.get_by_text("test_accuracy").first.wait_for()
    page.get_by_text("model.dropout").first.wait_for()
    page.screenshot(path=SHOTS / "run.png", full_page=True)


def test_run_page_shows_the_system_metrics(ui, store, page):
    """CPU, memory, disk and network over the run, recorded by MLflow's monitor, in the run's
    System metrics tab."""
    _, experiment_id, runs = store
    run = runs["single"]
    assert "system/cpu_utilization_percentage" in run.data.metrics
    page.goto(f"{ui}/#/experiments/{experiment_id}/runs/{run.info.run_id}/system-metrics")
    page.get_by_text("cpu_utilization_percentage").first.wait_for()
    page.screenshot(path=SHOTS / "system-metrics.png", full_page=True)


def test_confusion_matrix_artifact_loads_as_an_image(ui, store, page):
    _, experiment_id, runs = store
    run = runs["single"]
    page.goto(
        f"{ui}/#/experiments/{experiment_id}/runs/{run.info.run_id}/artifacts/confusion_matrix.png"
    )
    image = page.locator("img[src^='blob:']").first
    image.wait_for()
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
    )
    assert image.evaluate("img => img.naturalWidth") > 300
    page.screenshot(path=SHOTS / "confusion-matrix.png")

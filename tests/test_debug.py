"""Debug modes through the real CLI, read back from MLflow: `debug=fast_dev_run`, `overfit`,
`profile`."""

from __future__ import annotations

import json

from tests.conftest import client_for, failure_report, run_cli, runs_of


def test_fast_dev_run_takes_one_batch_through_the_whole_path_and_registers_nothing(tmp_path):
    proc = run_cli(tmp_path, "experiment=quick", "debug=fast_dev_run", "tracking.register_as=dbg")
    assert proc.returncode == 0, failure_report(proc)
    assert "train 32, val 32, test 32" in proc.stderr  # one batch of 32 each
    (run,) = runs_of(tmp_path, "quick")
    assert run.info.status == "FINISHED" and run.data.tags["debug"] == "fast_dev_run"
    client = client_for(tmp_path)
    assert {"confusion_matrix.png", "config", "logs"} <= {
        a.path for a in client.list_artifacts(run.info.run_id)
    }
    assert client.search_registered_models() == []  # kept out of the registry


def test_overfit_fits_ten_fixed_batches(tmp_path):
    # dataset.val_size=0 validates on the test set, except here: overfit validates on its
    # training batches, and the test set must still be scored on its own.
    proc = run_cli(tmp_path, "experiment=quick", "debug=overfit", "dataset.val_size=0")
    assert proc.returncode == 0, failure_report(proc)
    (run,) = runs_of(tmp_path, "quick")
    assert run.data.tags["debug"] == "overfit"
    assert run.data.metrics["overfit_accuracy"] >= 0.99
    assert 1 <= run.data.metrics["overfit_epochs"] < 200
    assert run.data.params["derived.train_size"] == "320"  # 10 batches of 32
    assert run.data.params["derived.test_size"] == "360"
    assert run.data.metrics["val_accuracy"] >= 0.99  # the fitted batches
    assert run.data.metrics["test_accuracy"] < run.data.metrics["val_accuracy"]

    stuck = run_cli(tmp_path, "experiment=quick", "debug=overfit", "debug.max_epochs=1",
                    "optimizer.lr=1e-6")  # fmt: skip
    assert stuck.returncode == 2
    (line,) = [ln for ln in stuck.stderr.splitlines() if ln.startswith("error:")]
    assert "debug=overfit: 10 batches not fitted in debug.max_epochs=1" in line, line


def test_profile_records_phases_and_the_backends_trace(tmp_path):
    proc = run_cli(tmp_path, "experiment=quick", "debug=profile", "debug.profile_batches=[3,6]")
    assert proc.returncode == 0, failure_report(proc)
    (run,) = runs_of(tmp_path, "quick")
    client = client_for(tmp_path)
    folder = client.download_artifacts(run.info.run_id, "profile", str(tmp_path / "got"))
    phases = json.loads((tmp_path / "got" / "profile" / "phases.json").read_text())
    assert {"import_seconds", "data_seconds", "fit_seconds", "job_seconds"} <= set(phases)
    traces = list((tmp_path / "got" / "profile" / "trace").rglob("*.xplane.pb"))
    assert traces and traces[0].stat().st_size > 10_000, folder

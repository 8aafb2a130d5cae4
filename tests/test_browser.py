"""The MLflow UI in a real headless Chromium (Debian's, driven by Playwright) over a finished study."""

import os
import re
import shutil
import sys
import urllib.parse
from pathlib import Path

import pytest
from conftest import FAST_EXPORTER
from mlflow.tracking import MlflowClient
from test_end_to_end import Server, free_port, write_experiment

from tuner.cli import main

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As root with no network: no sandbox, and none of Chromium's background connections.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def mlflow_server(tmp_path, mlflow_uri):
    db = tmp_path / "mlflow.db"  # tables created already
    port = free_port()
    env_cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{db}",
               "--host", "127.0.0.1", "--port", str(port)]
    os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # 2 processes instead of ~10
    server = Server(env_cmd, f"http://127.0.0.1:{port}", "/health", tmp_path / "mlflow-server.log", timeout=90)
    yield server
    server.stop()


def test_study_front_and_plot_in_the_mlflow_ui(tmp_path, monkeypatch, mlflow_server, small_task):
    monkeypatch.chdir(tmp_path)
    uri = mlflow_server.url  # the study logs through the real server, artifacts included
    config = write_experiment(tmp_path, "ui", trials=4, extra=FAST_EXPORTER + "\n")
    assert main(["run", str(config), "--in-process", "--tracking-uri", uri, "--no-progress"]) == 0
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("ui")
    parent = client.search_runs([experiment.experiment_id], "tags.`tuner.role` = 'study'")[0]
    front = client.search_runs([experiment.experiment_id], "tags.`tuner.pareto` = 'true'")
    assert front

    # pick and register through the same server: the model comes back from its registry and predicts alike
    import mlflow
    import numpy as np

    from tuner.measure.runtime import load_artifact

    assert main(["pick", "ui", "--min-accuracy", "0", "--out", str(tmp_path / "pick"), "--tracking-uri", uri,
                 "--register", "ui-model", "--alias", "staging"]) == 0
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # for the models:/ URI; undone after the test
    served = mlflow.pyfunc.load_model("models:/ui-model@staging")
    x = small_task.evaluation.inputs[0][:16]
    session = load_artifact(tmp_path / "pick" / "model.onnx")
    expected = session.run(None, {session.get_inputs()[0].name: x})[0]
    got = served.predict({session.get_inputs()[0].name: x})
    got = next(iter(got.values())) if isinstance(got, dict) else np.asarray(got)
    assert np.allclose(np.asarray(got), expected, atol=1e-5)

    if not Path(CHROMIUM).is_file():
        pytest.skip("Debian's chromium is not installed (the README's set-up installs it)")
    from playwright.sync_api import sync_playwright
    shots = tmp_path / "screenshots"
    shots.mkdir()
    base = f"{uri}/#/experiments/{experiment.experiment_id}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        # a newcomer's clicks (the README's): "Model training", the study's experiment, its run, the description's
        # front table, a front model (MLflow opens description links in a new tab)
        page.goto(uri)
        page.get_by_text("Model training", exact=True).first.click(timeout=90_000)
        page.get_by_role("link", name="ui", exact=True).first.click(timeout=60_000)
        page.get_by_text("matching runs").first.wait_for(timeout=90_000)  # the runs table, not a GenAI overview
        assert "No data available" not in page.inner_text("body")
        page.screenshot(path=str(shots / "experiment_first_screen.png"))
        page.locator('a[href*="/runs/"]', has_text="ui").first.click(timeout=30_000)  # the study's run
        page.get_by_text("Pareto front of study").first.wait_for(timeout=60_000)
        page.screenshot(path=str(shots / "study_run_description.png"), full_page=True)
        first = sorted(front, key=lambda r: r.data.metrics["latency_ms"])[0]
        number = int(first.data.tags["tuner.trial_number"])
        with page.context.expect_page(timeout=60_000) as tab:
            page.get_by_role("link", name=re.compile(rf"trial {number}$")).first.click(timeout=30_000)
        model_page = tab.value
        model_page.wait_for_url(re.compile(rf".*/runs/{first.info.run_id}.*"), timeout=60_000)
        model_page.get_by_role("tab", name="Artifacts").first.click(timeout=60_000)
        model_page.get_by_text("model.onnx").first.wait_for(timeout=60_000)
        model_page.screenshot(path=str(shots / "front_model.png"))
        # the study's runs, filtered to the front
        page.goto(f"{base}/runs?searchFilter=" + urllib.parse.quote("tags.`tuner.pareto` = 'true'"))
        page.get_by_text("matching runs").first.wait_for(timeout=90_000)
        page.get_by_text("ui", exact=True).first.wait_for(timeout=30_000)  # the study's parent run
        page.screenshot(path=str(shots / "front_runs.png"))
        # every front member's run page shows it as a trial on the front
        for run in front:
            page.goto(f"{base}/runs/{run.info.run_id}")
            page.get_by_text("tuner.pareto").first.wait_for(timeout=60_000)
            body = page.inner_text("body")
            assert run.info.run_name in body and re.search(r"tuner\.pareto\s*:?\s*true", body)
            assert re.search(r"tuner\.role\s*:?\s*trial", body)
        page.screenshot(path=str(shots / "front_trial.png"))
        # the interactive Pareto plot, previewed inside the artifact view
        page.goto(f"{base}/runs/{parent.info.run_id}/artifacts/pareto.html")
        page.get_by_text("pareto.html").first.wait_for(timeout=60_000)
        page.frame_locator("iframe").first.get_by_text("Pareto front").first.wait_for(timeout=60_000)
        page.screenshot(path=str(shots / "pareto_html.png"))
        browser.close()
    print(f"screenshots: {shots}")
    assert all((shots / name).stat().st_size > 10_000 for name in (
        "experiment_first_screen.png", "study_run_description.png", "front_model.png", "front_runs.png",
        "front_trial.png", "pareto_html.png"))

import shutil

import pytest

SMALL_TASK_ARGS = {"width": 16, "epochs": 3}
# Studies whose subject is not the export use the TorchScript exporter: 0.1 s per pruned export of the small
# digits CNN against 2.4 s for dynamo (and ~7 s for each process's first dynamo export), which halves such a
# study. The default exporter is what test_conformance, test_first_contact, test_build and the Ray executor's
# tests use.
FAST_EXPORTER = "exporter: torchscript"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Trained example models go to a per-session cache, not the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TUNER_CACHE_DIR", str(tmp_path_factory.mktemp("tuner-cache")))
    mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    yield
    mp.undo()


@pytest.fixture(scope="session")
def small_task(_isolated_cache):
    """The built-in digits task, small enough to train in seconds."""
    from tuner.tasks.digits_cnn import make_task

    return make_task(**SMALL_TASK_ARGS)


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory):
    """One empty MLflow sqlite store with its tables created (that takes ~4 s per store); tests get copies."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_uri(tmp_path, _mlflow_template):
    """A real MLflow store of this test's own, ``tmp_path/mlflow.db``, empty and ready."""
    shutil.copy(_mlflow_template, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"

import pytest

SMALL_TASK_ARGS = {"width": 16, "epochs": 3}


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

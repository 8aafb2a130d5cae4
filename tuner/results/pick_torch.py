"""`tuner pick` for a model of PyTorch's runtime (``runtime: torch``): its ``model.pt2`` (AOTInductor package) or
``model.pt`` (the rewritten module saved whole), its ``candidate.json``, a model card that says how to load it, and
a registered model version that points at the file."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import optuna

from tuner.core.records import ArtifactRecord, StudyMeta, TrialMeta
from tuner.results.card import (
    baseline_metrics,
    choices_table,
    row_metrics,
    score_table,
    tag_version,
)
from tuner.results.front import FrontRow


def export_torch_pick(client, study: optuna.Study, row: FrontRow, out_dir: Path, filename: str,
                      register_as: str | None, alias: str | None) -> ArtifactRecord:
    """Download the member's model file and ``candidate.json`` from its trial run, complete the record with what
    the trial measured, write the card; optionally register the file as a model version with an alias."""
    run_id = row.mlflow_run_id
    for name in (filename, "candidate.json"):
        local = client.download_artifacts(run_id, name, str(out_dir / ".download"))
        shutil.move(local, out_dir / name)
    shutil.rmtree(out_dir / ".download", ignore_errors=True)
    trial = study.trials[row.trial]
    meta, trial_meta = StudyMeta.load(study), TrialMeta.of(trial)
    built = ArtifactRecord.read(out_dir / "candidate.json")
    record = replace(built, key=row.key, study=study.study_name, trial=row.trial, mlflow_run_id=run_id,
                     artifact_sha256=trial_meta.artifact_sha256, summary=row.summary,
                     metrics=row_metrics(row, meta.metric_name, trial_meta), baseline=baseline_metrics(meta),
                     environment=trial_meta.environment, params=trial.params)
    record.write(out_dir / "candidate.json")
    (out_dir / "MODEL_CARD.md").write_text(torch_model_card(record, meta.metric_name, filename))
    if register_as:
        from mlflow.exceptions import MlflowException

        try:
            client.create_registered_model(register_as)
        except MlflowException as exc:  # a later version of a model registered before
            if "already exists" not in str(exc).lower():
                raise
        source = f"{client.get_run(run_id).info.artifact_uri}/{filename}"  # the file itself: no MLflow flavour
        version = client.create_model_version(register_as, source, run_id=run_id).version
        tags = {"tuner.study": study.study_name, "tuner.trial": str(row.trial), "tuner.summary": row.summary,
                "tuner.artifact_sha256": record.artifact_sha256 or "", "tuner.runtime": "torch"}
        record = replace(record, registered_model=tag_version(client, register_as, version, tags, alias))
    return record


def torch_model_card(record: ArtifactRecord, metric_name: str, filename: str) -> str:
    env, runtime = record.environment, record.runtime
    mode, device = runtime.get("compile_mode"), runtime.get("device", "cpu")
    if filename.endswith(".pt2"):
        load = ["import torch", f"model = torch._inductor.aoti_load_package('{filename}')   # compiled for {device}"]
    else:
        load = ["import torch", f"model = torch.load('{filename}', weights_only=False, map_location='{device}').eval()"]
        if mode not in (None, "none"):
            load.append(f"model = torch.compile(model{'' if mode == 'default' else f', mode={mode!r}'})")
    if runtime.get("tf32"):
        load.append("torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True")
    if runtime.get("cuda_graphs"):
        load.append("# measured with each input shape captured once as a CUDA graph and replayed "
                    "(tuner.evaluate_torch.GraphReplay)")
    lines = score_table(record, metric_name) + [
        "",
        f"Measured with PyTorch {env.get('torch', '?')} on {env.get('device_name', '?')} ({env.get('device', '?')}), "
        f"batch {env.get('batch_size', '?')}; {filename} sha256 `{record.artifact_sha256}`.",
        "", "## Load it", "", "```python", *load, "```", ""]
    return "\n".join(lines + choices_table(record.candidate)) + "\n"

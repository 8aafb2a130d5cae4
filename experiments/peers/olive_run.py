"""Microsoft Olive (olive-ai 0.13) as its documentation recommends for "fastest within an accuracy drop": a workflow
whose evaluator has two goals (the metric at most `drop` below fp32; latency) and a joint search over its
ONNX quantization pass (dynamic or static, per-channel, calibration method, format, precision: Olive's own search
space) with its TPE sampler; for transformer encoders, its transformer graph optimization first. Olive outputs the best
candidate by its goals (metric first, then latency), which is kept; `evaluations` counts the candidates it built and
evaluated (metric and latency each). One workflow per constraint.

    experiments/peers/.venvs/olive/bin/python experiments/peers/olive_run.py experiments/peers/work/minilm [--samples 20]
"""

import argparse
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Optional

from olive.common import config_utils
from olive.engine import config as engine_config
from olive.engine import footprint
from olive.evaluator import metric as olive_metric
from olive.evaluator import olive_evaluator
from olive.search import search_strategy
from olive.workflows import run as olive_run
from olive.workflows.run import config as run_config
from pydantic import SerializeAsAny

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from peer_common import Prepared, record  # noqa: E402


def _patch_olive() -> None:
    """Three things keep Olive 0.13 from running this workflow under pydantic 2 (2.11 and 2.14 tried), the first two
    before any pass runs: (1) a metric's `user_config` is typed `ConfigBase` and holds a subclass; pydantic serializes a
    field by its declared type, so the custom metric's user_script and evaluate_func are dropped whenever Olive dumps
    and reloads its configuration ('evaluate_func or metric_func is not specified in the metric config'), and so is
    the search sampler's config (its max_samples: the search then runs exhaustively, 200+ builds); (2) a
    custom metric's backend and its sub-type's metric_config are None, which their serializers do not allow
    ("'NoneType' object has no attribute 'model_dump'"); (3) below. (1): the two fields are made `SerializeAsAny` and
    the configs that nest them are rebuilt; (2): the two serializers are given the None case (the nesting configs
    compiled these functions into their own serializers, so their bodies are replaced in place)."""
    for cls, field in ((olive_metric.Metric, "user_config"), (search_strategy.SearchStrategyConfig, "sampler_config")):
        cls.model_fields[field].annotation = SerializeAsAny[Optional[config_utils.ConfigBase]]
    for cls in (olive_metric.SubMetric, olive_metric.Metric, olive_evaluator.OliveEvaluatorConfig,
                search_strategy.SearchStrategyConfig, engine_config.EngineConfig, run_config.RunEngineConfig,
                run_config.RunConfig):
        cls.model_rebuild(force=True)

    def serialize_optional(self, value):
        return value if value is None or isinstance(value, str) else value.model_dump()

    for serializer in (olive_metric.Metric.serialize_backend, olive_metric.SubMetric.serialize_metric_config):
        serializer.__code__ = serialize_optional.__code__

    # (3) a pass output found in Olive's cache is recorded as `model_config`, a field named `model_config_data`:
    # every search sample after the first that reuses a cached pass (the transformer optimization) failed with
    # '"FootprintNode" object has no field "model_config"'
    def update(self, **kwargs):
        for key, value in kwargs.items():
            setattr(self, "model_config_data" if key == "model_config" else key, value)

    footprint.FootprintNode.update = update


def workflow(prepared: Prepared, drop: float, samples: int, out: Path) -> dict:
    folder = str(prepared.folder.resolve())
    script = str((HERE / "olive_user.py").resolve())
    meta = prepared.meta
    data = {"user_script": script, "load_dataset_config": {"type": "peer_samples"}}
    passes = {}
    if meta["kind"] == "cosine":  # a transformer encoder: Olive's BERT-family graph fusions first
        passes["transformers_optimization"] = {"type": "OrtTransformersOptimization", "model_type": "bert"}
    passes["quantization"] = {"type": "OnnxQuantization", "data_config": "calibration"}
    return {
        "input_model": {"type": "ONNXModel", "model_path": str(prepared.fp32_path.resolve())},
        "systems": {"local": {"type": "LocalSystem", "accelerators": [
            {"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}},
        "data_configs": [
            {"name": "calibration", **data, "load_dataset_config": {"type": "peer_samples", "params": {
                "folder": folder, "which": "calibration"}}, "dataloader_config": {"batch_size": meta["calibration_batch"]}},
            {"name": "latency", **data, "load_dataset_config": {"type": "peer_samples", "params": {
                "folder": folder, "which": "evaluation"}}, "dataloader_config": {"batch_size": 1}},
        ],
        "evaluators": {"goals": {"metrics": [
            {"name": meta["metric"], "type": "custom", "sub_types": [{
                "name": meta["metric"], "priority": 1, "higher_is_better": True,
                "goal": {"type": "max-degradation", "value": drop}}],
             "user_config": {"user_script": script, "evaluate_func": "evaluate",
                             "evaluate_func_kwargs": {"folder": folder}}},
            {"name": "latency", "type": "latency", "data_config": "latency",
             "sub_types": [{"name": "avg", "priority": 2}],
             "user_config": {"inference_settings": {"onnx": {"session_options": {
                 "intra_op_num_threads": meta["latency"]["threads"]}}}}},
        ]}},
        "passes": passes,
        "search_strategy": {"execution_order": "joint", "sampler": "tpe",
                            "sampler_config": {"max_samples": samples, "seed": 0}},
        "evaluator": "goals", "host": "local", "target": "local",
        "cache_dir": str(out / "cache"), "output_dir": str(out / "output"), "log_severity_level": 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()
    _patch_olive()
    prepared = Prepared(args.folder)
    out = args.folder / "olive"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    started = time.time()
    models, notes = [], []
    for constraint in prepared.meta["constraints"]:
        drop = constraint["drop"]
        work = out / f"drop{drop}"
        try:
            olive_run(workflow(prepared, drop, args.samples, work))
        except Exception as exc:  # what happened, in Olive's words
            traceback.print_exc()
            notes.append(f"drop {drop}: {type(exc).__name__}: {exc}")
            continue
        history = work / "output" / "run_history.txt"  # one entry per model Olive built and evaluated
        if history.is_file():
            prepared.evaluations += history.read_text().count("metrics='{")
        found = sorted((work / "output").rglob("*.onnx"))
        for i, path in enumerate(found):
            target = out / f"drop{drop}_{i}.onnx"
            shutil.copy(path, target)
            data = path.with_name(path.name + ".data")
            if data.exists():
                shutil.copy(data, target.with_name(target.name + ".data"))
            models.append(target.name)
        if not found:
            notes.append(f"drop {drop}: no model within the goals")
    record(out, "Olive", prepared, started, "; ".join(notes) or "ok", models,
           files={m: str(p) for m, p in zip(models, models)})


if __name__ == "__main__":
    main()

"""The `tuner` command: run, resume, front, pick, verify. Thin: parse, call the API, print."""

from __future__ import annotations

import argparse
import os
import sys
from statistics import median

import optuna

from tuner import api
from tuner.core.disk import OutOfDiskSpace
from tuner.core.errors import USER_ERRORS
from tuner.core.stop import StudyStopped
from tuner.core.vocab import TRIAL_STAGES


def _run(args: argparse.Namespace) -> int:
    from tuner.experiment import load_experiment
    from tuner.results.front import format_table

    experiment = load_experiment(args.config)
    if args.output_dir:
        experiment = experiment.model_copy(update={"output_dir": args.output_dir})
    print(f"study {experiment.name!r}: task {experiment.task}, space {'auto' if experiment.auto_space else experiment.space_path}, "
          f"{args.trials or experiment.trials} trials, " + _workers_text(args, experiment.latency.threads))
    try:
        result = api.run(experiment, trials=args.trials, workers=args.workers, address=args.address,
                         tracking_uri=args.tracking_uri, progress=not args.no_progress, in_process=args.in_process)
    except KeyboardInterrupt as exc:
        in_flight = (f"{exc.finished} trial(s) in flight finished, {exc.cancelled} cancelled and queued to run "
                     "again" if isinstance(exc, StudyStopped) else "the trials in flight are queued to run again")
        if isinstance(exc, OutOfDiskSpace):
            print(f"\nstopped: {exc.line()}", file=sys.stderr)
            in_flight = "the trials in flight are queued to run again; free some space first"
        print(f"\ninterrupted: study {experiment.name!r} is saved in {experiment.run_dir} ({in_flight}); its front "
              "is published and its MLflow run marked KILLED. Continue with "
              f"`tuner resume {experiment.name}`" + (f" --output-dir {args.output_dir}" if args.output_dir else "")
              + ".", file=sys.stderr)
        return 130
    metric = result.metric_name
    before = (f"; {result.n_screened_before_build} of them as pruned fp32 models, never exported"
              if result.n_screened_before_build else "")
    screened = f", {result.n_screened} screened out on a subset (not timed{before})" if result.n_screened else ""
    print(f"\n{result.n_complete} complete, {result.n_failed} failed{screened} trials in {result.wall_s:.1f} s; "
          f"fp32 baseline {metric}={result.baseline['metric']:.4f}, {result.baseline['latency_ms']:.3f} ms")
    if result.stages:
        print(result.stages_line())
    print(f"Pareto front ({len(result.front)} models):")
    print(format_table(result.front, metric))
    if result.references:
        print("References (measured in this run):")
        print(format_table(result.references, metric))
    _print_timings(result)
    if result.disk is not None:
        print(result.disk.line())
    if result.peak_rss_mb:
        print("peak memory (RSS, MB; build and meter: the largest over trials): " + ", ".join(
            f"{process} {mb:.0f}" for process, mb in result.peak_rss_mb.items()))
    ui = "mlflow ui" + ("" if result.tracking_uri.startswith("sqlite:///mlflow.db") or "://" not in
                        result.tracking_uri else f" --backend-store-uri {result.tracking_uri}")
    print(f"\nrun directory: {result.run_dir}\nMLflow: {result.tracking_uri} (experiment {result.name!r}). Browse "
          f"with `{ui}`: 'Model training' (top left), experiment {result.name!r}, run {result.name!r}: its "
          f"description is the front, linked to each model's run.\npick with: tuner pick {result.name} "
          f"{metric_flag(metric, result.maximize)} X")
    return 0


def _workers_text(args: argparse.Namespace, latency_threads: int) -> str:
    from tuner.executors.factory import default_workers

    if args.in_process:
        return "in this process, one at a time (no Ray)"
    if args.workers:
        return _plural(args.workers, "worker")
    if args.address:
        return "workers: every CPU of the cluster"
    workers = _plural(default_workers(latency_threads), "worker")
    return f"{workers} ({_plural(latency_threads, 'core')} kept for latency)"


def _print_timings(result) -> None:
    if result.timings:
        # what a trial spends beside measuring its model (building, orchestration), of its wall time
        outside = [1 - (t.get("accuracy", 0.0) + t.get("latency", 0.0)) / t["wall"] for t in result.timings
                   if t.get("wall")]
        print(f"median seconds per completed trial ({len(result.timings)}): " + ", ".join(
            f"{k} {median(t.get(k, 0.0) for t in result.timings):.3f}" for k in TRIAL_STAGES
            if any(k in t for t in result.timings))
            + (f"; outside metric and latency: {median(outside):.0%} of a trial" if outside else ""))
    if result.live_front_s:
        spent = sum(result.live_front_s)
        print(f"live front: {len(result.live_front_s)} refreshes, {spent:.1f} s "
              f"({spent / result.wall_s:.1%} of the study's wall time)")
    if result.latency_model is not None:
        print(result.latency_model.line())
    check = result.latency_check
    if check:
        print(f"latency re-check: {check['retimed']} front models timed again with no build running; "
              f"during the study / alone = {check['median_ratio']:.3f} median "
              f"({check['min_ratio']:.3f}-{check['max_ratio']:.3f})")
    if result.failures:
        print(f"failed trials by reason ({sum(result.failures.values())}):")
        for reason, count in result.failures.items():
            print(f"  {count} x {reason}")
    if not result.timings:
        return
    cached = sum(1 for t in result.timings if "export" not in t)
    print(f"pruned fp32 exports reused from the study's cache: {cached}/{len(result.timings)} completed trials")


def _resume(args: argparse.Namespace) -> int:
    """Continue a study from its name: the experiment file it was run from, its run directory and MLflow store."""
    args.config = api.experiment_file_of(args.study, args.output_dir)
    return _run(args)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _front(args: argparse.Namespace) -> int:
    from tuner.results.front import format_table

    table = api.front(args.study, args.output_dir)
    metric = table.metric_name
    print(f"study {args.study!r}: {table.n_trials} trials; fp32 baseline "
          f"{metric}={_or_nan(table.baseline_metric):.4f}, {_or_nan(table.baseline_latency_ms):.3f} ms")
    print(format_table(table.rows, metric))
    if table.references:
        print("References:")
        print(format_table(table.references, metric))
    return 0


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _pick(args: argparse.Namespace, extra: list[str]) -> int:
    from tuner.results.front import format_table

    table = api.front(args.study, args.output_dir)
    metric = table.metric_name
    min_metric = _parse_min_metric(extra, metric, table.maximize)
    constraints = dict(min_metric=min_metric, max_latency_ms=args.max_latency_ms, max_size_mb=args.max_size_mb,
                       knee=args.knee)
    if min_metric is None and args.max_latency_ms is None and args.max_size_mb is None and not args.knee:
        print(f"study {args.study!r}: Pareto front ({len(table.rows)} models)")
        print(format_table(table.rows, metric))
        print(f"\npick one with a constraint: {metric_flag(metric, table.maximize)} X, --max-latency-ms Y, "
              "--max-size-mb Z (combinable), "
              "or --knee")
        return 0
    if args.alias and not args.register:
        print("error: --alias needs --register NAME", file=sys.stderr)
        return 2
    print(format_table([api.choose(table, **constraints)], metric))  # a wrong constraint fails here, fast
    record = api.pick(args.study, **constraints, out=args.out, register=args.register, alias=args.alias,
                      tracking_uri=args.tracking_uri, output_dir=args.output_dir)
    out = args.out
    print(f"\nwrote {os.path.join(out, 'model.onnx')}, {os.path.join(out, 'candidate.json')} and "
          f"{os.path.join(out, 'MODEL_CARD.md')}")
    if record.registered_model:
        reg = record.registered_model
        print(f"registered in MLflow as {reg['name']!r} version {reg['version']}"
              + (f" with alias {reg['alias']!r} (models:/{reg['name']}@{reg['alias']})" if reg["alias"] else ""))
    off = record.runtime.get("disabled_optimizers") or []
    print(f"load it with tuner.measure.runtime.load_artifact('model.onnx'), or in plain onnxruntime with graph optimization "
          f"level {record.runtime['opt_level']!r}" + (f" and disabled_optimizers={off}" if off else "")
          + " (both are stored in the file's metadata as tuner.runtime)")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from tuner.results.verify import format_report

    trials = list(args.trial or [])
    if args.front:
        trials += [r.trial for r in api.front(args.study, args.output_dir).rows]
    if not trials:
        print("error: give --trial N (repeatable) or --front", file=sys.stderr)
        return 2
    exact = True
    for number in dict.fromkeys(trials):
        report = api.verify(args.study, number, args.output_dir, args.tracking_uri)
        exact &= report["metric"]["diff"] == 0 and report["artifact_sha256"]["same"]
        print(format_report(report))
    return 0 if exact else 1


def metric_flag(metric: str, maximize: bool) -> str:
    """The pick flag that bounds the study's metric: ``--min-accuracy``, or ``--max-perplexity`` where lower is
    better."""
    return f"--{'min' if maximize else 'max'}-{metric}"


def _parse_min_metric(extra: list[str], metric: str, maximize: bool = True) -> float | None:
    """``--min-<metric> X`` (``--max-<metric> X`` for a metric minimized): the flag is named after the study's
    metric (``--min-accuracy`` for digits, ``--max-perplexity`` for a language model)."""
    value = None
    it = iter(extra)
    for token in it:
        flag, _, inline = token.partition("=")
        if flag in (metric_flag(metric, maximize), metric_flag("metric", maximize)) or (maximize and flag == "--min-accuracy"):
            value = float(inline or next(it))
        else:
            raise SystemExit(f"error: unrecognized argument {token!r} (this study's metric is {metric!r})")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuner", description="Search quantization, pruning and fusion per layer, "
                                     "measured on the real ONNX Runtime artifact.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run (or continue) the study of an experiment file")
    run.add_argument("config", help="experiment YAML file")
    run.add_argument("--trials", type=int, help="total trials the study should have (default: from the file)")
    run.add_argument("--workers", type=int, help="evaluations at a time (default: CPU cores)")
    run.add_argument("--address", help="Ray cluster address (default: a local Ray)")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default: the one a continued study used, else "
                     "MLflow's own, ./mlflow.db)")
    run.add_argument("--output-dir", help="where run directories go (default: from the file, tuner-runs)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--in-process", action="store_true", help="evaluate in this process, one candidate at a time, "
                     "without Ray (to debug a task; nothing else should run meanwhile, latency is timed here too)")
    resume = sub.add_parser("resume", help="continue a study by name (after a stop, a crash or a killed driver)")
    resume.add_argument("study")
    resume.add_argument("--output-dir", default="tuner-runs", help="where the study's run directory is")
    for flag, kind, text in (("--trials", int, "total trials the study should have"),
                             ("--workers", int, "evaluations at a time"), ("--address", str, "Ray cluster address"),
                             ("--tracking-uri", str, "MLflow tracking URI (default: the one the study used)")):
        resume.add_argument(flag, type=kind, help=text)
    resume.add_argument("--no-progress", action="store_true", help="no progress bar")
    resume.add_argument("--in-process", action="store_true", help="evaluate in this process, without Ray")
    front = sub.add_parser("front", help="print the Pareto front of a study")
    front.add_argument("study")
    front.add_argument("--output-dir", default="tuner-runs")
    pick = sub.add_parser("pick", help="pick a front model: writes model.onnx + candidate.json, registers it")
    pick.add_argument("study")
    pick.add_argument("--max-latency-ms", type=float, help="most accurate member at most this slow")
    pick.add_argument("--max-size-mb", type=float, help="only members at most this large (fastest wins)")
    pick.add_argument("--knee", action="store_true", help="the front's knee (among members meeting constraints)")
    pick.add_argument("--out", default=".", help="output folder (default: current folder)")
    pick.add_argument("--register", metavar="NAME", help="register the model in the MLflow Model Registry as NAME")
    pick.add_argument("--alias", help="with --register: set this alias on the new version (e.g. champion)")
    pick.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLflow's own, ./mlflow.db)")
    pick.add_argument("--output-dir", default="tuner-runs")
    pick.epilog = ("constraints: --min-<metric> X (e.g. --min-accuracy 0.97; --max-<metric> X where lower is "
                   "better, e.g. --max-perplexity 25), --max-latency-ms Y, --max-size-mb Z, "
                   "or --knee; with none, the front is listed")
    ver = sub.add_parser("verify", help="rebuild or reload trials' artifacts in a fresh process, re-score and "
                         "re-time them, report differences (exit 1 if a metric or file hash differs)")
    ver.add_argument("study")
    ver.add_argument("--trial", type=int, action="append", help="trial number (repeatable)")
    ver.add_argument("--front", action="store_true", help="every front member")
    ver.add_argument("--output-dir", default="tuner-runs")
    ver.add_argument("--tracking-uri", help="MLflow tracking URI, to fetch a candidate whose artifact is gone")
    space = sub.add_parser("space", help="print the search space generated from an experiment's model (the "
                           "`search_space: auto` one) as YAML, to start a space file from")
    space.add_argument("config", help="experiment YAML file (its search_space is ignored)")
    space.add_argument("--measure", action="store_true", help="build and time each kind's uniform model on this "
                       "machine first, and leave out the kinds that do not run faster than fp32 here")
    return parser


def _space(args: argparse.Namespace) -> int:
    """The auto space of the experiment's model, as YAML on stdout (what the study logs goes to stderr)."""
    import yaml

    from tuner.experiment import load_experiment
    from tuner.search.setup import prepare

    experiment = load_experiment(args.config).model_copy(update={"search_space": "auto"})
    task, space = prepare(experiment, log=lambda line: print(line, file=sys.stderr))
    space_file, header = space.file, [f"# generated by `tuner space {args.config}"
                                      + (" --measure`" if args.measure else "`")
                                      + ": every precision kind each layer's op type runs"
                                      + (" faster than fp32 here" if args.measure else "")
                                      + ", pruning where the model is prunable"]
    if args.measure:
        from tuner.search.kinds import keep_fast_kinds

        space_file, lines = keep_fast_kinds(space, task, experiment,
                                            log=lambda line: print(line, file=sys.stderr))
        header += [f"# {line}" for line in lines]
    print("\n".join(header))
    print(yaml.safe_dump(space_file.to_dict(), sort_keys=False), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "pick":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "resume":
            return _resume(args)
        if args.command == "front":
            return _front(args)
        if args.command == "verify":
            return _verify(args)
        if args.command == "space":
            return _space(args)
        return _pick(args, extra)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

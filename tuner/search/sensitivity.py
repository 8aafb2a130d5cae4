"""Per-layer sensitivity, before the study: what each layer group loses when it alone takes a choice.

For every layer group and every non-fp32 precision its rule offers, one *probe* candidate: the model fp32
except that group (``one_in``; or, ``one_out``, every layer at that precision except that group, which goes back
to fp32, NNCF-style). For every pruning group and ratio, one probe with that group alone pruned. Probes are
real artifacts built by the study's executor, never timed (:class:`tuner.core.records.Fidelity`), and scored on a
fixed subset of the evaluation set first; a probe whose estimate is too uncertain for the study's constraint is
scored again on the whole set (on a fidelity metric such as cosine, 32 samples are precise enough for nearly
every probe; a classifier's accuracy needs the whole set for most). Each row keeps its metric estimate and
standard error.

Rows are appended to ``sensitivity.jsonl`` in the run directory as they come, so a stopped pass resumes where
it stopped; the table and a chart go to MLflow.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tuner.core.candidate import Candidate
from tuner.core.precision import FP32
from tuner.core.records import Fidelity, metric_drop
from tuner.core.stop import StopRequest
from tuner.executors.base import Executor, Job, submit_and_poll
from tuner.space import SearchSpace

MODES = ("one_in", "one_out")
PRUNE = "prune"  # the kind of a pruning probe


@dataclass(frozen=True)
class Probe:
    """One sensitivity measurement: ``group`` (layers, or a pruning group) at ``choice``."""

    kind: str  # "precision" or "prune"
    group: str
    layers: tuple[str, ...]
    choice: str  # a precision choice, or a pruning ratio as text
    candidate: Candidate

    @property
    def id(self) -> str:
        return f"{self.kind}|{self.group}|{self.choice}"


@dataclass(frozen=True)
class SensitivityRow:
    """A probe's outcome: the metric estimated on the subset, its drop from fp32 (positive: worse) and error."""

    kind: str
    group: str
    choice: str
    layers: tuple[str, ...]
    metric: float | None
    drop: float | None
    stderr: float | None
    seconds: float
    error: str | None = None
    whole_set: bool = False  # scored on the whole evaluation set (else on a subset)

    @property
    def id(self) -> str:
        return f"{self.kind}|{self.group}|{self.choice}"

    @classmethod
    def from_dict(cls, data: Mapping) -> SensitivityRow:
        return cls(**{**data, "layers": tuple(data["layers"])})


def layer_groups(space: SearchSpace, max_groups: int = 64) -> dict[str, tuple[str, ...]]:
    """Each searched layer alone; for a model with more than ``max_groups`` layers, the layers of each *role*
    together (the same name but for its first number, the block's: ``encoder.layer.{}.attention.self.query``;
    ``stages.{}.layers.0.layer.2.convolution``, the third convolution of each stage's first block): the few
    projections that activation outliers feed are one role in every block, so a role probe finds them in one build.
    Where roles do not repeat (at most 3 roles, or none shared by two layers), the layers of each block
    (the name up to its first numeric part, ``features.3``) together instead."""
    layers = [name for name in space.layers if len(space.precision_choices.get(name, ())) > 1]
    if len(layers) <= max_groups:
        return {name: (name,) for name in layers}
    roles: dict[str, list[str]] = {}
    for name in layers:
        roles.setdefault(re.sub(r"(?<=\.)\d+(?=\.|$)", "{}", name, count=1), []).append(name)
    if len(roles) > 3 and len(roles) < len(layers):
        return {name: tuple(members) for name, members in roles.items()}
    groups: dict[str, list[str]] = {}
    for name in layers:
        match = re.match(r"^(.*?\.\d+)(\.|$)", name)
        groups.setdefault(match.group(1) if match else name, []).append(name)
    return {name: tuple(members) for name, members in groups.items()}


def probes(space: SearchSpace, mode: str = "one_in", max_groups: int = 64) -> list[Probe]:
    """The probes of ``space`` (see the module docstring), unpruned and unfused at the highest opt level."""
    if mode not in MODES:
        raise ValueError(f"sensitivity mode must be one of {MODES}, but got {mode!r}.")
    level = space.opt_levels[-1]
    out = []
    for group, layers in layer_groups(space, max_groups).items():
        offered = [c for c in space.precision_choices[layers[0]]
                   if c != FP32 and all(c in space.precision_choices[m] for m in layers)]
        for choice in offered:
            if mode == "one_in":
                precision = {m: choice for m in layers}
            else:
                precision = {m: choice for m, cs in space.precision_choices.items() if choice in cs}
                precision.update({m: FP32 for m in layers})
            out.append(Probe("precision", group, layers, choice, Candidate(tuple(precision.items()), opt_level=level)))
    for group, ratios in space.prune_choices.items():
        for ratio in ratios:
            if ratio > 0:
                candidate = Candidate(prune=((group, ratio),), opt_level=level, recovery=space.recovery[0],
                                      importance=space.importance[0])
                out.append(Probe(PRUNE, group, tuple(group.split("+")), f"{ratio:g}", candidate))
    return out


def run_sensitivity(executor: Executor, todo: Sequence[Probe], baseline_metric: float, maximize: bool,
                    samples: int | None, cache: Path, log: Callable[[str], None] = print,
                    reference_metric: Mapping[str, float] | None = None, stop: StopRequest | None = None,
                    target_stderr: float | None = None) -> list[SensitivityRow]:
    """Evaluate the probes not yet in ``cache`` (JSON lines) on the executor, untimed: first on ``samples`` of
    the evaluation set; then, with ``target_stderr``, every probe whose estimate is not that precise (see
    :func:`needs_whole_set`) again on the whole set, its row replaced and its seconds added up.

    ``reference_metric``: for ``one_out`` probes, the metric of the uniform candidate of each choice, from which
    the drop is measured (the drop is then what putting the group back to fp32 recovers, sign-flipped so that a
    larger value always means a more sensitive group)."""
    done = {row.id: row for row in read_rows(cache)}
    pending = [p for p in todo if p.id not in done]
    if done:
        log(f"sensitivity: {len(done)} probes from {cache.name}, {len(pending)} to go")
    with cache.open("a") as out:
        def score(batch: Sequence[Probe], fidelity: Fidelity, label: str) -> None:
            for row in _evaluate(executor, batch, fidelity, baseline_metric, maximize, reference_metric, stop,
                                 lambda done_, n, s: log(f"sensitivity: {done_}/{n} probes{label}, {s:.0f} s")):
                earlier = done.get(row.id)
                if earlier is not None:  # a second look: the pass spent both
                    row = replace(row, seconds=row.seconds + earlier.seconds)
                done[row.id] = row
                out.write(json.dumps(asdict(row)) + "\n")
                out.flush()

        score(pending, Fidelity(samples=samples, timed=False), "")
        if target_stderr is not None and samples is not None:
            again = [p for p in todo if p.id in done and needs_whole_set(done[p.id], target_stderr)]
            if again:
                log(f"sensitivity: {len(again)} of {len(todo)} probes not precise enough on {samples} samples "
                    f"(std. error above {target_stderr:.2g}, or no sample changed): scoring them on the whole set")
                score(again, Fidelity(samples=None, timed=False), " on the whole set")
    return [done[p.id] for p in todo if p.id in done]


def needs_whole_set(row: SensitivityRow, target_stderr: float) -> bool:
    """Whether a subset-scored probe must be scored again on the whole set: its standard error is above
    ``target_stderr``, or it is zero because no sampled output changed (a classifier whose probe flipped none
    of the sampled predictions: a subset that saw no change does not show the change is nil)."""
    if row.whole_set or row.drop is None:
        return False
    return row.stderr is None or row.stderr == 0.0 or row.stderr > target_stderr


def target_stderr(max_metric_drop: float | None, groups: int) -> float | None:
    """The standard error a probe needs for the seeds' predictions: a seed's predicted drop adds up one probe
    per group, and with each probe at ``max_metric_drop / (4 sqrt(groups))`` the sum's error stays within a
    quarter of the allowed drop. None (no constraint): the first look is kept."""
    if max_metric_drop is None or max_metric_drop <= 0 or groups < 1:
        return None
    return max_metric_drop / (4 * math.sqrt(groups))


def _evaluate(executor: Executor, todo: Sequence[Probe], fidelity: Fidelity, baseline_metric: float,
              maximize: bool, reference_metric: Mapping[str, float] | None, stop: StopRequest | None,
              progress: Callable[[int, int, float], None]) -> Iterator[SensitivityRow]:
    """The probes' rows, as the executor finishes them; ``progress(finished, of, seconds)`` every 10 and at the end."""
    queue, submitted, started, finished = list(todo), {}, time.perf_counter(), 0

    def next_job() -> Job | None:
        if not queue:
            return None
        probe = queue.pop(0)
        submitted[probe.id] = (probe, time.perf_counter())
        return probe.id, probe.candidate, fidelity

    # a stop leaves what finished in the cache; the rest runs next time
    for token, result in submit_and_poll(executor, next_job, stop):
        probe, at = submitted.pop(token)
        seconds = time.perf_counter() - at
        whole_set = result.scored_samples is None
        if result.completed:
            base = baseline_metric if reference_metric is None else reference_metric.get(probe.choice,
                                                                                      baseline_metric)
            drop = metric_drop(base, result.metric, maximize)
            if reference_metric is not None:
                drop = -drop
            row = SensitivityRow(probe.kind, probe.group, probe.choice, probe.layers, result.metric, drop,
                                 result.metric_stderr, seconds, whole_set=whole_set)
        else:
            row = SensitivityRow(probe.kind, probe.group, probe.choice, probe.layers, None, None, None,
                                 seconds, (result.error or "failed").splitlines()[0][:300], whole_set)
        finished += 1
        yield row
        if finished % 10 == 0 or not (queue or submitted):
            progress(finished, len(todo), time.perf_counter() - started)


def read_rows(cache: Path) -> list[SensitivityRow]:
    """The rows a pass wrote so far (a line cut short by a killed driver is dropped)."""
    if not cache.is_file():
        return []
    rows = []
    for line in cache.read_text().splitlines():
        try:
            rows.append(SensitivityRow.from_dict(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            continue
    return rows


def ranking(rows: Sequence[SensitivityRow], choice: str | None = None) -> list[SensitivityRow]:
    """Rows of ``choice`` (all, if None), most sensitive first; failed probes first of all."""
    picked = [r for r in rows if choice is None or r.choice == choice]
    return sorted(picked, key=lambda r: (r.drop is not None, -(r.drop or 0.0)))


def markdown_table(rows: Sequence[SensitivityRow], metric_name: str) -> str:
    lines = [f"| group | choice | {metric_name} | drop | ± (std. error) |", "|---|---|---|---|---|"]
    for r in ranking(rows):
        if r.drop is None:
            lines.append(f"| {r.group} | {r.choice} | failed: {r.error} | | |")
        else:
            lines.append(f"| {r.group} | {r.choice} | {r.metric:.4f} | {r.drop:+.4f} | {r.stderr or 0:.4f} |")
    return "\n".join(lines)


def heatmap_html(rows: Sequence[SensitivityRow], path: Path, metric_name: str) -> None:
    """Drop per group (rows) and choice (columns), as a self-contained interactive heatmap."""
    import plotly.graph_objects as go

    groups = list(dict.fromkeys(r.group for r in rows))
    choices = list(dict.fromkeys(r.choice if r.kind != PRUNE else f"prune {r.choice}" for r in rows))
    cell = {(r.group, r.choice if r.kind != PRUNE else f"prune {r.choice}"): r.drop for r in rows}
    z = [[cell.get((g, c)) for c in choices] for g in groups]
    figure = go.Figure(go.Heatmap(z=z, x=choices, y=groups, colorscale="Reds",
                                  colorbar={"title": f"{metric_name} drop"}))
    figure.update_layout(title=f"Sensitivity: {metric_name} drop when one group alone takes a choice",
                         height=max(400, 18 * len(groups)), yaxis={"autorange": "reversed"})
    figure.write_html(str(path), include_plotlyjs=True)

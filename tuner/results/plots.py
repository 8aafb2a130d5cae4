"""Front plots from plain rows: an interactive Pareto plot (HTML, self-contained) and a per-layer chart.

The data is computed once (`front.front_rows`, `layer_rows`), then rendered; nothing here reads a study.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tuner.core.precision import KINDS, family
from tuner.results.front import FrontRow

UNKNOWN_COLOR = "#ced4da"


def layer_rows(front: Sequence[FrontRow], params_of: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Per front member, the searched choice of every layer (precision) and pruning group (ratio)."""
    layers = list(dict.fromkeys(k[len("precision."):] for p in params_of.values() for k in p
                                if k.startswith("precision.")))
    groups = list(dict.fromkeys(k[len("prune."):] for p in params_of.values() for k in p if k.startswith("prune.")))
    members = []
    for row in front:
        params = params_of[row.trial]
        members.append({"trial": row.trial, "latency_ms": row.latency_ms, "label": row.summary,
                        "precision": {layer: params.get(f"precision.{layer}") for layer in layers},
                        "prune": {group: params.get(f"prune.{group}", 0.0) for group in groups}})
    return {"layers": layers, "groups": groups, "members": members}


def _color(kind: str | None) -> str:
    return KINDS[kind].color if kind in KINDS else UNKNOWN_COLOR


def plot_layers(data: dict[str, Any], metric_name: str, metric_of: dict[int, float], path: str | Path) -> None:
    """One row per front member (fastest at the top), one column per layer, coloured by precision;
    pruning ratios of the groups, if searched, in a second panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    layers, groups, members = data["layers"], data["groups"], data["members"]
    if not members or not (layers or groups):
        return
    widths = [max(len(layers), 1)] + ([max(len(groups), 1)] if groups else [])
    fig, axes = plt.subplots(1, len(widths), figsize=(min(2 + 0.28 * sum(widths), 30), 1.5 + 0.3 * len(members)),
                             gridspec_kw={"width_ratios": widths}, squeeze=False, dpi=110)
    labels = [f"trial {m['trial']}: {m['latency_ms']:.3f} ms, {metric_name} {metric_of[m['trial']]:.4f}"
              for m in members]
    ax = axes[0][0]
    for r, member in enumerate(members):
        for c, layer in enumerate(layers):
            ax.add_patch(plt.Rectangle((c, r), 1, 1, color=_color(family(member["precision"][layer]))))
    ax.set_xlim(0, max(len(layers), 1))  # a space that only prunes: no layer has a precision choice
    ax.set_ylim(len(members), 0)
    ax.set_xticks([c + 0.5 for c in range(len(layers))], layers, rotation=90, fontsize=6)
    ax.set_yticks([r + 0.5 for r in range(len(members))], labels, fontsize=7)
    ax.set_title("precision per layer", fontsize=9)
    used = sorted({family(m["precision"][layer]) for m in members for layer in layers} - {None})
    if used:
        fig.legend(handles=[Patch(color=_color(f), label=f) for f in used],
                   loc="upper right", ncol=len(used), fontsize=7, frameon=False)
    if groups:
        ax2 = axes[0][1]
        grid = [[m["prune"][g] for g in groups] for m in members]
        image = ax2.imshow(grid, cmap="Reds", vmin=0, vmax=max(0.5, max(max(row) for row in grid)), aspect="auto")
        ax2.set_xticks(range(len(groups)), groups, rotation=90, fontsize=6)
        ax2.set_yticks([])
        ax2.set_title("pruning ratio per group", fontsize=9)
        fig.colorbar(image, ax=ax2, fraction=0.05)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def plot_front_html(all_rows: Sequence[FrontRow], front: Sequence[FrontRow], metric_name: str,
                    path: str | Path, references: dict[str, FrontRow] | None = None,
                    threshold: float | None = None) -> None:
    """Interactive Pareto plot; hovering a point shows its trial, metrics and a summary of its choices.
    Self-contained (plotly.js inlined), so it renders in the MLflow UI's artifact view without a network."""
    import plotly.graph_objects as go

    def hover(rows):
        return [f"trial {r.trial}<br>{metric_name} {r.metric:.4f}<br>latency {r.latency_ms:.3f} ms"
                f" (p90 {(r.latency_p90_ms or 0):.3f})<br>size {(r.size_mb or 0):.3f} MB"
                f"<br>{r.summary}" for r in rows]

    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[r.latency_ms for r in all_rows], y=[r.metric for r in all_rows],
                             mode="markers", name="trials", marker={"color": "#9aa5b1", "size": 7},
                             text=hover(all_rows), hoverinfo="text"))
    fig.add_trace(go.Scatter(x=[r.latency_ms for r in front], y=[r.metric for r in front],
                             mode="lines+markers", line={"shape": "hv", "color": "#d9480f"}, name="Pareto front",
                             marker={"size": 10, "color": "#d9480f"}, text=hover(front), hoverinfo="text"))
    refs = list((references or {}).items())
    if refs:
        fig.add_trace(go.Scatter(x=[r.latency_ms for _, r in refs], y=[r.metric for _, r in refs],
                                 mode="markers+text", name="references", text=[label for label, _ in refs],
                                 textposition="bottom right", hovertext=hover([r for _, r in refs]),
                                 hoverinfo="text", marker={"symbol": "x", "size": 11, "color": "black"}))
    if threshold is not None:
        fig.add_hline(y=threshold, line_dash="dot", line_color="#d9480f", annotation_text="metric constraint")
    fig.update_layout(xaxis_title="latency (ms, median, ONNX Runtime CPU)", yaxis_title=metric_name,
                      template="plotly_white", hovermode="closest", height=520)
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)


def plot_front(all_rows: Sequence[FrontRow], front: Sequence[FrontRow], metric_name: str,
               path: str | Path, references: dict[str, FrontRow] | None = None,
               threshold: float | None = None) -> None:
    """Scatter of every completed trial, the front as a step line, labelled references, the feasibility line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter([r.latency_ms for r in all_rows], [r.metric for r in all_rows], s=14, color="#9aa5b1",
               label="trials")
    ax.step([r.latency_ms for r in front], [r.metric for r in front], where="post", color="#d9480f")
    ax.scatter([r.latency_ms for r in front], [r.metric for r in front], s=30, color="#d9480f",
               label="Pareto front", zorder=3)
    for label, row in (references or {}).items():
        ax.scatter([row.latency_ms], [row.metric], marker="x", s=60, color="black", zorder=4)
        ax.annotate(label, (row.latency_ms, row.metric), textcoords="offset points", xytext=(5, -12))
    if threshold is not None:
        ax.axhline(threshold, color="#d9480f", linestyle=":", linewidth=1, label="metric constraint")
    ax.set_xlabel("latency (ms, median, ONNX Runtime CPU)")
    ax.set_ylabel(metric_name)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

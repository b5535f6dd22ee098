"""The report's plots: matplotlib figures rendered off-screen (Agg) into base64 PNG data URIs.

Each function takes plain numbers (already read by data.py) and returns a ``data:image/png``
URI, or None when there is nothing to draw. Figures are built with ``matplotlib.figure.Figure``,
never pyplot, so no global state or display is touched and the loop can call this between stages.
Colours run from light (early iterations) to dark (late ones). Test: `pytest -q tests/test_report.py`.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

DPI = 90


def _figure(w: float, h: float):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI)
    fig.set_layout_engine("constrained")
    return fig


def to_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _colour(t: int, n: int):
    from matplotlib import colormaps

    return colormaps["viridis"](0.85 - 0.75 * (t / max(1, n)))


def _label(t: int) -> str:
    return "base" if t == 0 else f"iter {t}"


def accuracy(points: Mapping[int, Mapping[str, float]], k: int | None) -> str | None:
    """Held-out greedy / maj@k / pass@k per iteration (0 = base)."""
    if not points:
        return None
    fig = _figure(6.4, 3.2)
    ax = fig.add_subplot()
    ts = sorted(points)
    lines = (("greedy", "greedy", "o-"), ("maj", f"maj@{k or 'k'}", "s--"), ("pass", f"pass@{k or 'k'}", "^:"))
    for key, name, style in lines:
        ys = [points[t].get(key) for t in ts]
        xs = [t for t, y in zip(ts, ys) if y is not None]
        ax.plot(xs, [y for y in ys if y is not None], style, label=name)
    for t in ts:
        if points[t].get("greedy") is not None:
            ax.annotate(f"{points[t]['greedy']:.3f}", (t, points[t]["greedy"]), textcoords="offset points",
                        xytext=(0, -13), ha="center", fontsize=8)
    ax.set_xticks(ts, [_label(t) for t in ts])
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return to_uri(fig)


def by_family(values: Mapping[int, Mapping[str, float]], n_iter: int) -> str | None:
    """Grouped bars: greedy accuracy per question family, one bar per iteration."""
    fams = sorted({f for v in values.values() for f in v})
    if not fams:
        return None
    fig = _figure(max(6.4, 0.9 * len(fams) + 2), 3.2)
    ax = fig.add_subplot()
    ts = sorted(values)
    width = 0.8 / len(ts)
    for j, t in enumerate(ts):
        xs = [i + (j - (len(ts) - 1) / 2) * width for i in range(len(fams))]
        ax.bar(xs, [values[t].get(f, 0) for f in fams], width, label=_label(t), color=_colour(t, n_iter))
    ax.set_xticks(range(len(fams)), fams)
    ax.set_ylabel("greedy accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=min(len(ts), 6))
    return to_uri(fig)


def curves(panels: Sequence[tuple[str, Mapping[int, Sequence[tuple[float, float]]]]], n_iter: int) -> str | None:
    """Per-step training curves: one panel per metric, one line per iteration."""
    panels = [(title, series) for title, series in panels if any(series.values())]
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = _figure(3.3 * cols, 2.5 * rows)
    for i, (title, series) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        for t, pts in sorted(series.items()):
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if len(pts) < 30 else "-", ms=3,
                        color=_colour(t, n_iter), label=_label(t))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    return to_uri(fig)


def qtype_mix(mix: Mapping[int, Mapping[str, int]], kinds: Sequence[str]) -> str | None:
    """Stacked horizontal bars: share of each question type (and invalid) per iteration."""
    ts = [t for t in sorted(mix) if sum(mix[t].values())]
    if not ts:
        return None
    from matplotlib import colormaps

    fig = _figure(6.4, 0.5 * len(ts) + 1.2)
    ax = fig.add_subplot()
    left = [0.0] * len(ts)
    cmap = colormaps["tab10"]
    for j, kind in enumerate(kinds):
        share = [mix[t].get(kind, 0) / sum(mix[t].values()) for t in ts]
        colour = (0.75, 0.75, 0.75, 1) if kind == "invalid" else cmap(j % 10)
        ax.barh([_label(t) for t in ts], share, left=left, label=kind, color=colour)
        left = [a + b for a, b in zip(left, share)]
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of generated questions")
    ax.invert_yaxis()
    ax.legend(fontsize=8, ncols=min(len(kinds), 4), loc="upper center", bbox_to_anchor=(0.5, -0.35))
    return to_uri(fig)


def agreement(hist: Mapping[int, Mapping[float, int]], band: tuple[float, float], n_iter: int) -> str | None:
    """Distribution of the reasoner's agreement c per iteration; the kept band shaded."""
    ts = [t for t in sorted(hist) if hist[t]]
    if not ts:
        return None
    fig = _figure(min(3.2 * len(ts), 12.8), 2.8)
    axes = fig.subplots(1, len(ts), sharey=True, squeeze=False)[0]
    lo, hi = band
    for ax, t in zip(axes, ts):
        cs = sorted(hist[t])
        step = min((b - a for a, b in zip(cs, cs[1:])), default=0.1)
        ax.axvspan(lo, hi, color="tab:green", alpha=0.12, label=f"kept band [{lo:.3f}, {hi:.3f}]")
        ax.bar(cs, [hist[t][c] for c in cs], width=0.8 * step,
               color=["tab:green" if lo <= c <= hi else "tab:gray" for c in cs])
        ax.set_xlim(0, 1.05)
        ax.set_title(_label(t), fontsize=9)
        ax.set_xlabel("agreement c", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("questions")
    axes[0].legend(fontsize=7, loc="upper left")
    return to_uri(fig)

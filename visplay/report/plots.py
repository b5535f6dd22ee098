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


def binomial_se(p: float | None, n) -> float | None:
    """The standard error sqrt(p(1-p)/n) of an accuracy p measured on n items (None when unknown).

    >>> round(binomial_se(0.5, 100), 3)
    0.05
    """
    if p is None or not isinstance(n, (int, float)) or n <= 0:
        return None
    return (max(0.0, p * (1 - p)) / n) ** 0.5


def accuracy_figure(points: Mapping[int, Mapping[str, float]], k: int | None, prior: float | None = None):
    """The figure of `accuracy`: each point with a binomial-SE error bar (n = points[t]["n"]), the prior as a line."""
    if not points:
        return None
    fig = _figure(6.4, 3.2)
    ax = fig.add_subplot()
    ts = sorted(points)
    lines = (("greedy", "greedy", "o-"), ("maj", f"maj@{k or 'k'}", "s--"), ("pass", f"pass@{k or 'k'}", "^:"))
    for key, name, style in lines:
        xs = [t for t in ts if points[t].get(key) is not None]
        ys = [points[t][key] for t in xs]
        err = [binomial_se(points[t][key], points[t].get("n")) or 0.0 for t in xs]
        ax.errorbar(xs, ys, yerr=err, fmt=style, capsize=3, label=name)
    for t in ts:
        if points[t].get("greedy") is not None:
            ax.annotate(f"{points[t]['greedy']:.3f}", (t, points[t]["greedy"]), textcoords="offset points",
                        xytext=(0, -13), ha="center", fontsize=8)
    if prior is not None:
        ax.axhline(prior, color="0.4", ls="-.", lw=1, label=f"answer prior {prior:.3f}")
    ax.set_xticks(ts, [_label(t) for t in ts])
    ax.set_ylabel("held-out accuracy (± SE)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return fig


def accuracy(points: Mapping[int, Mapping[str, float]], k: int | None, prior: float | None = None) -> str | None:
    """Held-out greedy / maj@k / pass@k per iteration (0 = base), ± binomial SE, with the answer prior."""
    fig = accuracy_figure(points, k, prior)
    return None if fig is None else to_uri(fig)


def by_family_figure(values: Mapping[int, Mapping[str, float]], n_iter: int,
                     ns: Mapping[str, int] | None = None, priors: Mapping[str, float] | None = None):
    """The figure of `by_family`: bars ± binomial SE (n per family from ``ns``), each family's prior as a dash."""
    fams = sorted({f for v in values.values() for f in v})
    if not fams:
        return None
    ns, priors = ns or {}, priors or {}
    fig = _figure(max(6.4, 0.9 * len(fams) + 2), 3.2)
    ax = fig.add_subplot()
    ts = sorted(values)
    width = 0.8 / len(ts)
    for j, t in enumerate(ts):
        xs = [i + (j - (len(ts) - 1) / 2) * width for i in range(len(fams))]
        ys = [values[t].get(f, 0) for f in fams]
        err = [binomial_se(y, ns.get(f)) or 0.0 for y, f in zip(ys, fams)]
        ax.bar(xs, ys, width, yerr=err, capsize=2, label=_label(t), color=_colour(t, n_iter))
    shown = [(i, priors[f]) for i, f in enumerate(fams) if priors.get(f) is not None]
    if shown:
        ax.hlines([p for _, p in shown], [i - 0.45 for i, _ in shown], [i + 0.45 for i, _ in shown],
                  colors="0.2", linestyles="-.", lw=1.2, label="answer prior")
    ax.set_xticks(range(len(fams)), fams)
    ax.set_ylabel("greedy accuracy (± SE)")
    ax.set_ylim(0, 1.02)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=min(len(ts) + bool(shown), 6))
    return fig


def by_family(values: Mapping[int, Mapping[str, float]], n_iter: int,
              ns: Mapping[str, int] | None = None, priors: Mapping[str, float] | None = None) -> str | None:
    """Grouped bars: greedy accuracy per question family ± SE, one bar per iteration, the family prior marked."""
    fig = by_family_figure(values, n_iter, ns, priors)
    return None if fig is None else to_uri(fig)


def curves_figure(panels: Sequence[tuple[str, Mapping[int, Sequence[tuple[float, float]]]]], n_iter: int,
                  events: Mapping[str, Sequence[tuple[float, float]]] | None = None):
    """The figure of `curves`: integer step ticks; ``events[title]`` = (step, value) points marked with a red x."""
    from matplotlib.ticker import MaxNLocator

    panels = [(title, series) for title, series in panels if any(series.values())]
    if not panels:
        return None
    events = events or {}
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = _figure(3.3 * cols, 2.5 * rows)
    for i, (title, series) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        for t, pts in sorted(series.items()):
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if len(pts) < 30 else "-", ms=3,
                        color=_colour(t, n_iter), label=_label(t))
        marks = events.get(title) or []
        if marks:
            ax.plot([m[0] for m in marks], [m[1] for m in marks], "x", color="tab:red", ms=9, mew=2,
                    label="flagged", gid="flagged")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if i == 0 or marks:
            ax.legend(fontsize=7)
    return fig


def curves(panels: Sequence[tuple[str, Mapping[int, Sequence[tuple[float, float]]]]], n_iter: int,
           events: Mapping[str, Sequence[tuple[float, float]]] | None = None) -> str | None:
    """Per-step training curves: one panel per metric, one line per iteration, flagged steps marked."""
    fig = curves_figure(panels, n_iter, events)
    return None if fig is None else to_uri(fig)


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

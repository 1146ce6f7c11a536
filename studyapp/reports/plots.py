"""Report figures as SVG strings: matplotlib's object API only, never pyplot.

pyplot keeps a global registry of open figures (a memory leak in a long-running web process and
a source of cross-request bleed); ``Figure`` + ``FigureCanvasSVG`` keeps each figure local to the
call and lets it be garbage-collected.

Output is deterministic, so the same results give byte-identical SVG (a report can be diffed
and hashed): ``svg.hashsalt`` fixes the ids matplotlib would otherwise draw from uuid4, and the
``Date`` metadata is dropped. The salt differs per plot so that several figures inlined in one
HTML page never share an element id. Text stays text (``svg.fonttype: none``): smaller files,
searchable labels.

Colours: the Okabe-Ito palette (safe for the common colour-vision deficiencies) with the control
arm always black, and ColorBrewer's BrBG diverging scale for Likert ratings. Every function takes
plain lists/dicts (no Django), and returns "" when there is nothing to draw.
"""
from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib as mpl
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure

CONTROL_COLOUR = "#000000"
# Okabe & Ito (2008) without black (reserved for control) and yellow (too pale on white).
ARM_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
BASELINE_COLOUR = "#7f7f7f"
# ColorBrewer BrBG, 7 classes (colour-blind safe): 1 = strongly disagree ... 7 = strongly agree.
LIKERT_COLOURS = ("#8c510a", "#d8b365", "#f6e8c3", "#f5f5f5", "#c7eae5", "#5ab4ac", "#01665e")
LIKERT_LEVELS = tuple(range(1, 8))

_BASE_RC = {
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
    "font.size": 9.0,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.image_inline": True,
    # Arm names and Likert items are the researcher's text: "$5" or "$x$" is drawn as typed, never
    # parsed as mathtext (a malformed formula would raise on every render of a frozen plan's report).
    "text.parse_math": False,
}


def arm_colours(arms: Sequence[Mapping[str, Any]]) -> list[str]:
    """Black for the control arm(s), then Okabe-Ito colours in arm order."""
    colours, i = [], 0
    for arm in arms:
        if arm.get("kind") == "control":
            colours.append(CONTROL_COLOUR)
        else:
            colours.append(ARM_COLOURS[i % len(ARM_COLOURS)])
            i += 1
    return colours


def control_first(arms: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Control arm(s) first, the others in their given order (a stable sort)."""
    return sorted(arms, key=lambda a: a.get("kind") != "control")


def _num(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _render(fig: Figure, name: str) -> str:
    """The figure as an SVG string without the XML prolog (ready to inline in HTML)."""
    buffer = io.StringIO()
    with mpl.rc_context({**_BASE_RC, "svg.hashsalt": f"studyapp-report-{name}"}):
        FigureCanvasSVG(fig).print_svg(buffer, metadata={"Date": None})
    svg = buffer.getvalue()
    svg = re.sub(r"^<\?xml[^>]*\?>\s*", "", svg)
    svg = re.sub(r"^<!DOCTYPE[^>]*>\s*", "", svg)
    # matplotlib numbers group ids per figure ("figure_1", "axes_1"): prefix every id and every
    # reference to one, so figures inlined in one page stay valid HTML with unique ids.
    svg = re.sub(r'\bid="([^"]+)"', rf'id="{name}-\1"', svg)
    svg = re.sub(r'href="#([^"]+)"', rf'href="#{name}-\1"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", rf"url(#{name}-\1)", svg)
    return svg.strip()


def _figure(width: float, height: float) -> Figure:
    # A bare Figure: not registered with pyplot, freed when the last reference goes.
    return Figure(figsize=(width, height), layout="constrained")


def _errorbar(ax, x, y, low, high, *, colour, horizontal=False, **kwargs) -> None:
    """A point with an asymmetric error bar; a bound that is missing draws no bar."""
    err = None
    if low is not None and high is not None:
        err = [[max(y - low, 0.0)], [max(high - y, 0.0)]]
    if horizontal:
        ax.errorbar([y], [x], xerr=err, fmt="o", color=colour, ecolor=colour, capsize=4, **kwargs)
    else:
        ax.errorbar([x], [y], yerr=err, fmt="o", color=colour, ecolor=colour, capsize=4, **kwargs)


def accuracy_plot(arms: Sequence[Mapping[str, Any]], *, chance: float | None = None,
                  ylabel: str = "Accuracy (participant mean)", name: str = "accuracy") -> str:
    """Per-arm accuracy: point estimate with its confidence interval, control first.

    ``arms``: ``[{"name", "kind", "estimate", "ci_low", "ci_high"}, ...]``.
    """
    arms = [a for a in control_first(arms) if _num(a.get("estimate")) is not None]
    if not arms:
        return ""
    with mpl.rc_context({**_BASE_RC, "svg.hashsalt": f"studyapp-report-{name}"}):
        # One row per arm (arm names are long: they would collide as x tick labels).
        fig = _figure(6.0, 0.9 + 0.36 * len(arms))
        ax = fig.add_subplot()
        for row, (arm, colour) in enumerate(zip(arms, arm_colours(arms))):
            _errorbar(ax, row, _num(arm["estimate"]), _num(arm.get("ci_low")), _num(arm.get("ci_high")),
                      colour=colour, horizontal=True)
        if chance is not None:
            ax.axvline(chance, color=BASELINE_COLOUR, linestyle="--", linewidth=1)
            ax.annotate("chance", (chance, -0.5), xytext=(2, 0), textcoords="offset points",
                        ha="left", va="top", color=BASELINE_COLOUR)
        ax.set_yticks(range(len(arms)), [str(a["name"]) for a in arms])
        ax.set_ylim(len(arms) - 0.5, -0.5)
        ax.set_xlim(0, 1)
        ax.set_xlabel(ylabel)
        return _render(fig, name)


def pre_post_plot(arms: Sequence[Mapping[str, Any]], *, name: str = "pre-post") -> str:
    """Paired pre-test and post-test means per arm with confidence intervals.

    ``arms``: ``[{"name", "kind", "pre": {"estimate", "ci_low", "ci_high"}, "post": {...}}, ...]``.
    Each arm is a line from its pre-test to its post-test mean (slightly dodged so intervals
    do not overlap).
    """
    arms = [a for a in control_first(arms)
            if _num((a.get("pre") or {}).get("estimate")) is not None
            and _num((a.get("post") or {}).get("estimate")) is not None]
    if not arms:
        return ""
    with mpl.rc_context({**_BASE_RC, "svg.hashsalt": f"studyapp-report-{name}"}):
        fig = _figure(4.6, 3.0)
        ax = fig.add_subplot()
        n = len(arms)
        for i, (arm, colour) in enumerate(zip(arms, arm_colours(arms))):
            dodge = (i - (n - 1) / 2) * 0.06
            pre, post = arm["pre"], arm["post"]
            ys = [_num(pre["estimate"]), _num(post["estimate"])]
            ax.plot([dodge, 1 + dodge], ys, color=colour, linewidth=1.5, label=str(arm["name"]))
            for x, part in ((dodge, pre), (1 + dodge, post)):
                _errorbar(ax, x, _num(part["estimate"]), _num(part.get("ci_low")), _num(part.get("ci_high")),
                          colour=colour)
        ax.set_xticks([0, 1], ["Pre-test", "Post-test"])
        ax.set_xlim(-0.4, 1.4)
        ax.set_ylim(0, 1)
        ax.set_ylabel("Accuracy (participant mean)")
        ax.legend(frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
        return _render(fig, name)


def ratings_plot(items: Mapping[str, Mapping[str, Mapping[Any, int]]],
                 arm_order: Sequence[str] | None = None, *, name: str = "ratings") -> str:
    """Distribution of Likert ratings (1-7): one panel per item, one stacked bar per arm.

    ``items``: ``{item: {arm: {rating: count}}}``; ratings may be ints or strings. Bars show
    proportions of the arm's answers, so arms of different sizes compare; n is in the label.
    """
    items = {item: arms for item, arms in items.items() if arms}
    if not items:
        return ""
    with mpl.rc_context({**_BASE_RC, "svg.hashsalt": f"studyapp-report-{name}"}):
        n_arms = max(len(arms) for arms in items.values())
        fig = _figure(6.4, 0.7 + len(items) * (0.5 + 0.32 * n_arms))
        axes = fig.subplots(len(items), 1, squeeze=False)[:, 0]
        for ax, (item, arms) in zip(axes, items.items()):
            names = [a for a in (arm_order or []) if a in arms] + [a for a in arms if a not in (arm_order or [])]
            labels = []
            for row, arm in enumerate(names):
                counts = {int(k): int(v) for k, v in arms[arm].items()}
                total = sum(counts.values())
                labels.append(f"{arm} (n={total})")
                left = 0.0
                for level, colour in zip(LIKERT_LEVELS, LIKERT_COLOURS):
                    share = counts.get(level, 0) / total if total else 0.0
                    ax.barh(row, share, left=left, color=colour, edgecolor="#bdbdbd", linewidth=0.4,
                            label=str(level) if row == 0 else None)
                    left += share
            ax.set_yticks(range(len(names)), labels)
            ax.invert_yaxis()
            ax.set_xlim(0, 1)
            ax.set_title(str(item), loc="left")
        axes[-1].set_xlabel("Share of answers (1 = strongly disagree ... 7 = strongly agree)")
        axes[0].legend(ncols=7, frameon=False, loc="lower right", bbox_to_anchor=(1.0, 1.0),
                       handlelength=1.0, columnspacing=0.8, fontsize=8)
        return _render(fig, name)


def baselines_plot(arms: Sequence[Mapping[str, Any]], baselines: Sequence[Mapping[str, Any]],
                   *, name: str = "baselines") -> str:
    """Human accuracy per arm (with CI) next to trivial observers (e.g. "always the true label").

    ``arms``: as for :func:`accuracy_plot`; ``baselines``: ``[{"name", "accuracy"}, ...]`` drawn as
    grey bars, so a reader sees at once whether people beat a rule that needs no explanation.
    """
    arms = [a for a in control_first(arms) if _num(a.get("estimate")) is not None]
    baselines = [b for b in baselines if _num(b.get("accuracy")) is not None]
    if not arms and not baselines:
        return ""
    with mpl.rc_context({**_BASE_RC, "svg.hashsalt": f"studyapp-report-{name}"}):
        rows = len(arms) + len(baselines)
        fig = _figure(6.0, 0.8 + 0.32 * rows)
        ax = fig.add_subplot()
        labels = []
        for row, (arm, colour) in enumerate(zip(arms, arm_colours(arms))):
            _errorbar(ax, row, _num(arm["estimate"]), _num(arm.get("ci_low")), _num(arm.get("ci_high")),
                      colour=colour, horizontal=True)
            labels.append(f"{arm['name']} (participants)")
        for row, baseline in enumerate(baselines, start=len(arms)):
            ax.barh(row, _num(baseline["accuracy"]), color=BASELINE_COLOUR, height=0.5)
            labels.append(f"{baseline['name']} (trivial observer)")
        ax.set_yticks(range(rows), labels)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("Accuracy at predicting the model")
        return _render(fig, name)

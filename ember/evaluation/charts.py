"""PNG charts for eval reports (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLORS = {"win": "#2e7d32", "tie": "#9e9e9e", "loss": "#c62828"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # CJK category names render with whatever CJK font is installed; missing glyphs only warn.
    plt.rcParams["font.sans-serif"] = ["Noto Sans CJK SC", "WenQuanYi Micro Hei", "WenQuanYi Zen Hei", "SimHei", "DejaVu Sans"]
    plt.rcParams["axes.unicode_minus"] = False
    return plt


def outcome_chart(table: dict[str, dict[str, Any]], path: Path, title: str) -> Path:
    """Horizontal stacked bars of win / tie / loss rates, one per category, "overall" last."""
    import warnings

    plt = _pyplot()
    names = list(table)
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(names) + 1.4))
    left = [0.0] * len(names)
    for outcome in ("win", "tie", "loss"):
        values = [table[n][f"{outcome}_rate"] for n in names]
        bars = ax.barh(names, values, left=left, color=COLORS[outcome], label=outcome)
        for bar, value in zip(bars, values, strict=True):
            if value >= 8:
                ax.text(bar.get_x() + bar.get_width() / 2, bar.get_y() + bar.get_height() / 2, f"{value:.0f}%",
                        ha="center", va="center", color="white", fontsize=8)
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.set_xlim(0, 100)
    ax.invert_yaxis()
    ax.set_xlabel("% of prompts")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Glyph missing from font" for CJK names without a CJK font
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def grouped_bars(groups: list[str], series: dict[str, list[float]], path: Path, title: str, ylabel: str) -> Path:
    """One cluster of bars per group, one bar per series (e.g. per run)."""
    import warnings

    plt = _pyplot()
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(groups) * max(len(series), 1) * 0.6 + 2), 4))
    for k, (label, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, values, width=width, label=label)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=30 if len(groups) > 4 else 0, ha="right" if len(groups) > 4 else "center")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

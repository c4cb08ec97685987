"""Drawing: matplotlib figures written as PNG (the Agg renderer; pyplot's global state is not used).

Each function takes the numbers of :mod:`rld.viz.compute` and a path, and returns the path.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from rld.errors import UserError
from rld.viz.compute import PooledFeatures, TimeAccuracy, TopLogits, as_grid

DPI = 120
MIN_BUBBLE = 60.0  # marker area (pt²) of a method without extra parameters
BUBBLE_PER_LOG_PARAM = 120.0


def save(fig: Figure, out: str | Path) -> Path:
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=DPI, format="png", bbox_inches="tight", facecolor="white")
    except OSError as err:
        raise UserError(f"cannot write the figure {out}: {err.strerror}") from err
    return out


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, dpi=DPI, format="png", bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def _class_colors(num_classes: int) -> np.ndarray:
    """(num_classes, 4) RGBA: qualitative palettes up to 20 classes, evenly spaced hues beyond."""
    from matplotlib import colormaps

    if num_classes <= 10:
        return colormaps["tab10"](np.arange(num_classes))
    if num_classes <= 20:
        return colormaps["tab20"](np.arange(num_classes))
    return colormaps["hsv"](np.linspace(0, 1, num_classes, endpoint=False))


def tsne_figure(panels: list[tuple[str, np.ndarray, PooledFeatures]]) -> Figure:
    """Fig. 4: one scatter per run of its 2-D embedding, coloured by class."""
    fig = Figure(figsize=(6 * len(panels) + 1.5, 5.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    classes = panels[0][2].classes
    colors = _class_colors(len(classes))
    for ax, (title, emb, feats) in zip(axes, panels):
        ax.scatter(emb[:, 0], emb[:, 1], c=colors[feats.labels], s=8, linewidths=0, alpha=0.85)
        ax.set_title(f"{title}\n{len(feats.labels)} test samples, {feats.features.shape[1]}-d pooled features")
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_xlabel("t-SNE 1"), ax.set_ylabel("t-SNE 2")
    if len(classes) <= 20:
        handles = [axes[-1].scatter([], [], color=colors[i], s=30, label=name) for i, name in enumerate(classes)]
        fig.legend(handles=handles, loc="outside right center", title="class", fontsize=8, frameon=False)
    else:
        from matplotlib import colormaps
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        mappable = ScalarMappable(Normalize(0, len(classes)), colormaps["hsv"])
        fig.colorbar(mappable, ax=list(axes), shrink=0.8, label="class index")
    fig.suptitle("t-SNE of the students' pooled test features (colour = class)")
    return fig


def logit_difference_figure(panels: list[tuple[str, np.ndarray]], classes: list[str]) -> Figure:
    """Fig. 5: per-class mean |z_T − z_S| as heat maps with one shared colour scale."""
    grids = [as_grid(values) for _, values in panels]
    vmin = min(float(np.nanmin(g)) for g in grids)
    vmax = max(float(np.nanmax(g)) for g in grids)
    rows, cols = grids[0].shape
    fig = Figure(figsize=(5.2 * len(panels) + 1, 5), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    image = None
    for ax, (title, values), grid in zip(axes, panels, grids):
        image = ax.imshow(grid, cmap="viridis", vmin=vmin, vmax=vmax)
        ax.set_title(f"{title}\nmean over classes {float(np.mean(values)):.4g}")
        ax.set_xticks(range(cols)), ax.set_yticks(range(rows))
        ax.set_xlabel("class index mod " + str(cols)), ax.set_ylabel(f"class index // {cols}")
        if len(values) <= 25:  # few classes: name and value in each cell
            for i, value in enumerate(values):
                ax.text(
                    i % cols,
                    i // cols,
                    f"{classes[i]}\n{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if value < (vmin + vmax) / 2 else "black",
                )
    fig.colorbar(image, ax=list(axes), shrink=0.85, label="mean |teacher logit − student logit|")
    fig.suptitle("Per-class teacher–student logit difference on the test set")
    return fig


def _bubble(extra: int) -> float:
    return MIN_BUBBLE + BUBBLE_PER_LOG_PARAM * float(np.log10(1 + extra))


def time_accuracy_figure(points: list[TimeAccuracy], metric: str = "best") -> Figure:
    """Fig. 6: training time per batch vs test top-1; bubble area grows with the extra parameters."""
    from matplotlib import colormaps

    fig = Figure(figsize=(10, 5.5), layout="constrained")
    ax = fig.subplots()
    colors = colormaps["tab10"](np.arange(len(points)) % 10)
    for color, p in zip(colors, points):
        extra = f"+{p.extra_params:,} trainable parameters" if p.extra_params else "no extra parameters"
        ax.scatter(
            p.ms_per_batch,
            p.top1,
            s=_bubble(p.extra_params),
            color=color,
            alpha=0.7,
            edgecolors="black",
            label=f"{p.name}: {p.method}, {extra}",
        )
        ax.annotate(p.name, (p.ms_per_batch, p.top1), xytext=(8, 5), textcoords="offset points", fontsize=8)
    legend = fig.legend(loc="outside right upper", fontsize=8, frameon=False, title="run: method, extra parameters")
    for handle in legend.legend_handles:
        handle.set_sizes([MIN_BUBBLE])
    xs = [p.ms_per_batch for p in points]
    ys = [p.top1 for p in points]
    span_x = max(max(xs) - min(xs), 0.05 * max(xs), 1e-3)
    span_y = max(max(ys) - min(ys), 1.0)
    ax.set_xlim(min(xs) - 0.15 * span_x, max(xs) + 0.3 * span_x)
    ax.set_ylim(min(ys) - 0.2 * span_y, max(ys) + 0.3 * span_y)
    ax.set_xlabel("training time per batch (ms)")
    ax.set_ylabel(f"test top-1 (%), {metric} epoch")
    ax.grid(alpha=0.3)
    ax.set_title(
        "Training time vs accuracy\nbubble area grows with the method's extra trainable parameters (smallest: none)",
        fontsize=11,
    )
    return fig


def class_correlation_figure(panels: list[TopLogits], title: str) -> Figure:
    """Fig. 7: one bar chart of the top-k logits per panel; the panel's own class in red."""
    fig = Figure(figsize=(4.2 * len(panels), 4.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        colors = ["tab:red" if i == panel.target else "tab:blue" for i in panel.indices]
        positions = np.arange(len(panel.values))
        ax.bar(positions, panel.values, color=colors)
        ax.set_xticks(positions, panel.names, rotation=60, ha="right", fontsize=8)
        ax.set_title(panel.title, fontsize=10)
        ax.set_ylabel("logit")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    return fig


def learning_curves_figure(curves: list[tuple[str, list[dict]]], title: str = "Learning curves") -> Figure:
    """Test top-1 and train loss per epoch, one line per run."""
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    ax_acc, ax_loss = fig.subplots(1, 2)
    for name, rows in curves:
        epochs = [r["epoch"] for r in rows]
        ax_acc.plot(epochs, [r["test_top1"] for r in rows], marker="o" if len(rows) < 15 else None, label=name)
        ax_loss.plot(epochs, [r["train_loss"] for r in rows], marker="o" if len(rows) < 15 else None, label=name)
    ax_acc.set_title("test top-1 (%)"), ax_acc.set_xlabel("epoch"), ax_acc.set_ylabel("top-1 (%)")
    ax_loss.set_title("train loss"), ax_loss.set_xlabel("epoch"), ax_loss.set_ylabel("loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(curves) <= 20:
        ax_loss.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    fig.suptitle(title)
    return fig


def tune_heatmap_figure(
    row_key: str,
    row_values: list[str],
    col_key: str,
    col_values: list[str],
    means: np.ndarray,
    chosen: tuple[int, int],
    title: str,
) -> Figure:
    """``rld tune`` of a two-key grid: the mean validation top-1 of every point (rows: the first key's
    values, columns: the second's; ``means`` (R, C), NaN where a point has no result), each cell
    labelled with its value and the chosen point framed in red."""
    from matplotlib.patches import Rectangle

    rows, cols = means.shape
    fig = Figure(figsize=(1.3 * cols + 3.2, 1.0 * rows + 2.2), layout="constrained")
    ax = fig.subplots()
    finite = means[np.isfinite(means)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmax <= vmin:  # every point alike: a one-point scale around the value
        vmin, vmax = vmin - 0.5, vmax + 0.5
    image = ax.imshow(means, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    for r in range(rows):
        for c in range(cols):
            value = means[r, c]
            text = "—" if not np.isfinite(value) else f"{value:.2f}"
            dark = np.isfinite(value) and value < (vmin + vmax) / 2
            ax.text(c, r, text, ha="center", va="center", fontsize=9, color="white" if dark else "black")
    ax.add_patch(Rectangle((chosen[1] - 0.5, chosen[0] - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
    ax.set_xticks(range(cols), col_values), ax.set_yticks(range(rows), row_values)
    ax.set_xlabel(col_key), ax.set_ylabel(row_key)
    fig.colorbar(image, ax=ax, shrink=0.85, label="validation top-1 (%)")
    ax.set_title(title, fontsize=10)
    return fig

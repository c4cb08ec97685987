"""Figures of the paper from run folders: t-SNE (Fig. 4), teacher–student logit difference
(Fig. 5), training time vs accuracy (Fig. 6) and class correlation (Fig. 7).

:mod:`rld.viz.compute` holds the numbers, :mod:`rld.viz.figures` the drawing (matplotlib, Agg),
:mod:`rld.viz.plots` one function per ``rld plot`` kind.
"""

from rld.viz.compute import (
    class_top_logits,
    extra_parameters,
    grid_shape,
    logit_difference_matrix,
    pooled_features,
    time_accuracy_points,
    tsne_embedding,
)
from rld.viz.plots import plot_class_correlation, plot_logit_difference, plot_time_vs_accuracy, plot_tsne

PLOT_KINDS = ("tsne", "logit-diff", "time-vs-acc", "class-corr")

__all__ = [
    "PLOT_KINDS",
    "class_top_logits",
    "extra_parameters",
    "grid_shape",
    "logit_difference_matrix",
    "plot_class_correlation",
    "plot_logit_difference",
    "plot_time_vs_accuracy",
    "plot_tsne",
    "pooled_features",
    "time_accuracy_points",
    "tsne_embedding",
]

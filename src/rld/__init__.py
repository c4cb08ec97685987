"""rld: knowledge distillation built around Refined Logit Distillation (Sun et al., arXiv 2408.07703)."""

__version__ = "0.1.0"

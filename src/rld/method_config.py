"""The ``method`` section of the configuration, apart from :mod:`rld.config` so that the methods
(:mod:`rld.methods`, whose parameters extend it) and the configuration (which looks methods up by
name) do not import each other."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MethodConfig:
    """The ``method`` section: ``name`` picks the method, whose own subclass of this class (in its
    file under :mod:`rld.methods`) adds its parameters with their published defaults."""

    name: str = "vanilla"
    logit_standardization: bool = False
    ls_temperature: float | None = None  # base temperature b of logit standardization (default 2)
    ls_weight: float | None = None  # its distillation weight w (default 9)

"""A Weights & Biases run per run folder (``rld[wandb]``), through the ``wandb`` library.

The project is ``train.experiment``, else ``WANDB_PROJECT``, else the preset's family; the entity
``WANDB_ENTITY`` (or the account's default); ``WANDB_MODE=offline`` logs without a network into
``out/wandb/`` (``wandb sync`` uploads it later). The configuration is the run's config (nested
as in ``config.yaml``), each epoch's row of ``metrics.csv`` is logged at step = epoch, the summary
goes to the run's summary; the sweep, tune or reproduction a run belongs to is its ``group``.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

from rld.trackers.base import RunInfo, summary_metrics

TAG_LENGTH = 64  # W&B's longest tag


class WandbTracker:
    name = "wandb"

    def __init__(self) -> None:
        self.run: Any = None

    def open(self, info: RunInfo, stored: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
        import wandb

        run_id = stored.get("run_id")
        tags = info.tags()
        folder = tags.pop("run_folder")
        group = tags.pop("group", None)
        if run_id is None:
            project = info.cfg.train.experiment or os.environ.get("WANDB_PROJECT") or info.experiment
            resume, entity = None, None
        else:  # continue the run where it is (its tags stay those it started with)
            project, entity = stored.get("project"), stored.get("entity")
            resume, tags = ("allow" if _offline() else "must"), {}
        self.run = wandb.init(
            project=project,
            entity=entity,
            id=run_id,
            resume=resume,
            name=info.name,
            group=group,
            dir=str(info.out),
            config={**asdict(info.cfg), "run_folder": folder},
            tags=[f"{k}={v}"[:TAG_LENGTH] for k, v in tags.items()] or None,
            allow_val_change=True,
            reinit="create_new",  # a sweep's runs are open side by side
            settings=wandb.Settings(console="off"),  # rld's log lines stay as they are
        )
        if run_id is None:
            for row in history:  # epochs trained before the run was tracked
                self.log_epoch(row, int(row["epoch"]))
        return {"run_id": self.run.id, "project": self.run.project, "entity": self.run.entity}

    def log_epoch(self, row: dict[str, Any], epoch: int) -> None:
        self.run.log({k: v for k, v in row.items() if k != "epoch"}, step=epoch)

    def finish(self, summary: dict[str, Any], finished: bool) -> None:
        self.run.summary.update({**summary_metrics(summary), "device": str(summary.get("device", ""))})
        self.run.finish(exit_code=0 if finished else 1)
        self.run = None

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def _offline() -> bool:
    return os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled")

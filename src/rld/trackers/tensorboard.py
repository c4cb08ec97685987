"""TensorBoard events in the run folder's ``tb/`` (when tensorboard is installed; otherwise nothing)."""

from __future__ import annotations

from typing import Any

from rld.trackers.base import RunInfo


class TensorBoardTracker:
    name = "tensorboard"

    def __init__(self) -> None:
        self.writer = None

    def open(self, info: RunInfo, stored: dict[str, Any], history: list[dict[str, Any]]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        self.writer = SummaryWriter(str(info.out / "tb"))
        return None

    def log_epoch(self, row: dict[str, Any], epoch: int) -> None:
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch":
                    self.writer.add_scalar(key, value, epoch)

    def finish(self, summary: dict[str, Any], finished: bool) -> None:
        pass

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

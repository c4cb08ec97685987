"""An MLflow run per run folder (``rld[mlflow]``), through :class:`mlflow.tracking.MlflowClient`.

The tracking URI is ``MLFLOW_TRACKING_URI``, else the file store ``mlruns/`` in the current folder
(browse it with ``mlflow ui --backend-store-uri ./mlruns``). The experiment is ``train.experiment``,
else ``MLFLOW_EXPERIMENT_NAME``, else the preset's family. Parameters: the resolved configuration's
flattened keys; metrics: the columns of ``metrics.csv`` at step = epoch, then the summary; tags: preset,
method, teacher, student, seed, group (a sweep's runs share it) and the run folder.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from rld.trackers.base import RunInfo, summary_metrics

PARAM_LENGTH = 500  # the longest parameter value every MLflow version accepts


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else the file store ``./mlruns``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return (Path.cwd() / "mlruns").as_uri()


class MlflowTracker:
    name = "mlflow"

    def __init__(self) -> None:
        self.client: Any = None
        self.run_id: str | None = None

    def open(self, info: RunInfo, stored: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
        uri, run_id = tracking_uri(), stored.get("run_id")
        if uri.startswith("file:") or "://" not in uri:
            # the file store: MLflow >= 3.7 asks for this opt-in (it recommends a database; rld's default
            # needs none)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient

        self.client = client = MlflowClient(tracking_uri=uri)
        params = {k: v[:PARAM_LENGTH] for k, v in info.params().items()}
        if run_id is not None:  # a resumed run continues its tracked run
            self.run_id = run_id
            logged = client.get_run(run_id).data.params
            client.update_run(run_id, status="RUNNING")
            new = {k: v for k, v in params.items() if k not in logged}
            changed = {k: v for k, v in params.items() if k in logged and logged[k] != v}
            tags = [RunTag(f"resumed.{k}", v) for k, v in changed.items()]  # parameters cannot change
            client.log_batch(run_id, params=[Param(k, v) for k, v in new.items()], tags=tags)
        else:
            experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") if not info.cfg.train.experiment else None
            name = experiment or info.experiment
            found = client.get_experiment_by_name(name)
            experiment_id = found.experiment_id if found is not None else client.create_experiment(name)
            run = client.create_run(experiment_id, tags=info.tags(), run_name=info.name)
            self.run_id = run.info.run_id
            items = [Param(k, v) for k, v in params.items()]
            for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters per batch
                client.log_batch(self.run_id, params=items[i : i + 100])
            for row in history:  # epochs trained before the run was tracked
                self.log_epoch(row, int(row["epoch"]))
        return {"run_id": self.run_id, "tracking_uri": uri}

    def log_epoch(self, row: dict[str, Any], epoch: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(k, float(v), now, epoch)
            for k, v in row.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, summary: dict[str, Any], finished: bool) -> None:
        from mlflow.entities import Metric, RunTag

        now, step = int(time.time() * 1000), int(summary.get("epochs_done") or 0)
        metrics = [Metric(k, v, now, step) for k, v in summary_metrics(summary).items()]
        tags = [RunTag("device", str(summary.get("device", "")))]
        self.client.log_batch(self.run_id, metrics=metrics, tags=tags)
        self.client.set_terminated(self.run_id, status="FINISHED" if finished else "KILLED")

    def close(self) -> None:
        self.client = None

"""TensorBoard logging of an FDS run: a :class:`~hpo.core.callbacks.Callbacks` implementation.

Each step axis has its own TensorBoard run (subdirectory), so that a resumed run can purge exactly
what the interrupted process wrote after its last checkpoint (``purge_step`` hides every event of
a run at or after that step, whatever its tag):

- ``LOGDIR`` (axis: outer step k): ``outer/val_loss``, ``outer/val_<metric>`` (the ranking metric:
  ``val_acc``, ``val_rmse``, ...), ``outer/diverged``, ``outer/diverged_at``, ``hypergrad/<name>/<j>``,
  ``hyper/<name>/<j>``, ``step/<name>/<j>`` (``<name>/<group>/<j>`` for a grouped type), the
  ``schedule`` figure, a ``heatmap/<name>`` figure (groups x segments) per grouped type, ``divergence`` and ``summary`` texts;
- ``LOGDIR/inner`` (axis: global inner step): ``inner/train_loss``;
- ``LOGDIR/inner/outer<k>`` (axis: inner step t of outer step k): ``inner/train_loss_by_step``;
- ``LOGDIR/retrain`` (axis: retrain step): ``retrain/<name>/train_loss``.
"""

from __future__ import annotations

from pathlib import Path
from typing import final

import torch
from torch import Tensor

from hpo.core.callbacks import Callbacks, OuterRecord
from hpo.core.schedule import Schedule
from hpo.reporting.report import MANY_GROUPS, divergence_text
from hpo.reporting.schedule_plot import heatmap_figure, schedule_figure


@final
class TensorBoardLogger(Callbacks):
    """Writes an FDS run to TensorBoard event files under ``logdir``.

    ``log_every`` inner steps the minibatch loss is written (one host sync each time).  To resume
    a run after outer step ``k`` was completed, pass ``purge_step=k`` and ``global_step`` = the
    inner steps run so far: whatever the killed process logged after its checkpoint is hidden.
    """

    def __init__(self, logdir: str | Path, log_every: int = 10, purge_step: int | None = None,
                 global_step: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer_cls = SummaryWriter
        self.logdir = Path(logdir)
        resuming = purge_step is not None
        self.writer = SummaryWriter(str(self.logdir), purge_step=purge_step)
        self.inner_writer = SummaryWriter(str(self.logdir / "inner"), purge_step=global_step if resuming else None)
        self.outer_writer = None  # per outer step, opened in on_outer_start
        self.retrain_writer = None
        self.log_every = log_every
        self.global_step = global_step

    def on_outer_start(self, k: int, horizon: int) -> None:
        """Open the run of outer step ``k``'s inner curve (purging a partial one from a killed run)."""
        self.outer_writer = self._writer_cls(str(self.logdir / "inner" / f"outer{k}"), purge_step=0)

    def on_inner_step(self, k: int, t: int, loss: Tensor) -> None:
        """Inner training loss every ``log_every`` steps."""
        if t % self.log_every == 0:
            x = float(loss)
            self.inner_writer.add_scalar("inner/train_loss", x, self.global_step)
            if self.outer_writer is not None:
                self.outer_writer.add_scalar("inner/train_loss_by_step", x, t)
        self.global_step += 1

    def on_outer_step(self, record: OuterRecord) -> None:
        """Validation metrics, hypergradients, values and step sizes of outer step ``record.k``."""
        k = record.k
        w = self.writer
        w.add_scalar("outer/val_loss", record.val_loss, k)
        if not record.label.is_loss:
            w.add_scalar(f"outer/val_{record.metric}", record.val_metric, k)
        w.add_scalar("outer/diverged", float(record.diverged), k)
        if record.diverged:

            w.add_scalar("outer/diverged_at", float((record.extra or {}).get("diverged_at", record.steps_run)), k)
            w.add_text("divergence", f"outer step {k}: {divergence_text(record)}", k)
        names = record.groups or {}
        for group, data in (("hypergrad", record.hypergrad), ("hyper", record.values), ("step", record.step_sizes)):
            for name, vals in data.items():
                if vals and isinstance(vals[0], list) and len(vals) > MANY_GROUPS:  # one per example: a histogram
                    w.add_histogram(f"{group}/{name}", torch.tensor(vals, dtype=torch.float64).flatten(), k)
                elif vals and isinstance(vals[0], list):  # grouped: one row per group
                    labels = names.get(name) or [str(g) for g in range(len(vals))]
                    for label, row in zip(labels, vals):
                        for j, x in enumerate(row):
                            w.add_scalar(f"{group}/{name}/{label}/{j}", x, k)
                else:
                    for j, x in enumerate(vals):
                        w.add_scalar(f"{group}/{name}/{j}", x, k)
        schedule = Schedule.from_dict(record.values, names or None)
        w.add_figure("schedule", schedule_figure(schedule, title=f"after outer step {k + 1}"), k)
        for name in (n for n, g in schedule.group_counts.items() if g <= MANY_GROUPS):
            w.add_figure(f"heatmap/{name}", heatmap_figure(schedule, name, f"{name} after outer step {k + 1}"), k)
        for writer in (w, self.inner_writer, self.outer_writer):
            if writer is not None:
                writer.flush()
        if self.outer_writer is not None:
            self.outer_writer.close()
            self.outer_writer = None

    def on_retrain_step(self, name: str, t: int, steps: int, loss: Tensor) -> None:
        """Retrain loss every ``log_every`` steps."""
        if self.retrain_writer is None:
            self.retrain_writer = self._writer_cls(str(self.logdir / "retrain"), purge_step=0)
        if t % self.log_every == 0:
            self.retrain_writer.add_scalar(f"retrain/{name}/train_loss", float(loss), t)

    def add_text(self, tag: str, text: str, step: int | None = None) -> None:
        """A markdown text entry (at outer step ``step``)."""
        self.writer.add_text(tag, text, step)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close every event file."""
        for writer in (self.writer, self.inner_writer, self.outer_writer, self.retrain_writer):
            if writer is not None:
                writer.close()

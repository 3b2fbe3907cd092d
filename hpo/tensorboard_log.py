"""TensorBoard logging of an FDS run: a :class:`~hpo.callbacks.Callbacks` implementation.

Scalars: ``inner/train_loss`` (global inner step), ``outer/val_loss``, ``outer/val_acc``,
``hypergrad/<name>/<j>``, ``hyper/<name>/<j>`` and ``step/<name>/<j>`` per outer step, and
``retrain/<name>/train_loss``.  Figures: ``schedule`` (the learned schedule over the horizon).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from hpo.callbacks import Callbacks, OuterRecord
from hpo.schedule import Schedule


def schedule_figure(schedule: Schedule, horizon: int = 1000, title: str = "learned schedule"):  # type: ignore[no-untyped-def]
    """A matplotlib figure with one panel per hyperparameter type, value against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = schedule.names
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3), squeeze=False)
    dense = schedule.dense(horizon)
    for ax, name in zip(axes[0], names):
        ax.plot(range(horizon), dense[name].numpy(), drawstyle="steps-post")
        ax.set_title(name)
        ax.set_xlabel("fraction of horizon (x1000)" if horizon == 1000 else "step")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


class TensorBoardLogger(Callbacks):
    """Writes an FDS run to TensorBoard event files under ``logdir``.

    ``log_every`` inner steps the minibatch loss is written (one host sync each time).
    """

    def __init__(self, logdir: str | Path, log_every: int = 10, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(logdir), purge_step=purge_step)
        self.log_every = log_every
        self.global_step = 0

    def on_inner_step(self, k: int, t: int, loss: Tensor) -> None:
        """Inner training loss every ``log_every`` steps."""
        if t % self.log_every == 0:
            self.writer.add_scalar("inner/train_loss", float(loss), self.global_step)
            self.writer.add_scalar(f"inner/train_loss_outer{k}", float(loss), t)
        self.global_step += 1

    def on_outer_step(self, record: OuterRecord) -> None:
        """Validation metrics, hypergradients, values and step sizes of outer step ``record.k``."""
        k = record.k
        w = self.writer
        w.add_scalar("outer/val_loss", record.val_loss, k)
        w.add_scalar("outer/val_acc", record.val_acc, k)
        w.add_scalar("outer/diverged", float(record.diverged), k)
        for group, data in (("hypergrad", record.hypergrad), ("hyper", record.values), ("step", record.step_sizes)):
            for name, vals in data.items():
                for j, x in enumerate(vals):
                    w.add_scalar(f"{group}/{name}/{j}", x, k)
        w.add_figure("schedule", schedule_figure(Schedule.from_dict(record.values), title=f"after outer step {k}"), k)
        w.flush()

    def on_retrain_step(self, name: str, t: int, steps: int, loss: Tensor) -> None:
        """Retrain loss every ``log_every`` steps."""
        if t % self.log_every == 0:
            self.writer.add_scalar(f"retrain/{name}/train_loss", float(loss), t)

    def add_text(self, tag: str, text: str) -> None:
        """A markdown text entry."""
        self.writer.add_text(tag, text)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()

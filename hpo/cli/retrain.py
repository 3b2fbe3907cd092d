"""``hpo retrain --schedule FILE``: train a fresh model with a saved schedule and report test metrics."""

from __future__ import annotations

from pathlib import Path

import click

from hpo.cli.types import resolve_device
from hpo.cli.validation import check_numbers, load_schedule_file
from hpo.device import DTYPES
from hpo.registry import BUILTIN_RULES, BUILTIN_TASKS, VISION_TASKS, resolve_rule, resolve_task
from hpo.retrain import retrain

#: ``hpo run --seed S`` retrains with seed ``S + RETRAIN_SEED_OFFSET``; ``hpo retrain`` does the same.
RETRAIN_SEED_OFFSET = 7919


@click.command("retrain")
@click.option("--schedule", "schedule_file", type=click.Path(path_type=Path), required=True,
              help="Schedule JSON: an 'hpo run' schedule.json or the output of Schedule.save.")
@click.option("--task", default="mnist1d-mlp", show_default=True,
              help=f"Task: {', '.join(BUILTIN_TASKS)} or module:attr.")
@click.option("--optimizer", default="sgd", show_default=True,
              help=f"Update rule: {', '.join(BUILTIN_RULES)} or module:attr.")
@click.option("--steps", type=int, default=None,
              help="Training steps; the schedule is stretched to them (default: retrain_steps in the file).")
@click.option("--samples", type=int, default=None, help="MNIST-1D: number of generated samples (default 5000).")
@click.option("--data-root", type=click.Path(path_type=Path), default=Path("data"), show_default=True,
              help="Vision tasks: folder holding the datasets (see 'hpo run --data-root').")
@click.option("--augment", default=None, help="Vision tasks: minibatch augmentation, e.g. crop,flip.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same meaning as 'hpo run --seed'.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="float32", show_default=True)
def retrain_command(schedule_file: Path, task: str, optimizer: str, steps: int | None, samples: int | None,
                    data_root: Path, augment: str | None, seed: int, device: str, dtype: str) -> None:
    """Retrain from scratch with the schedule in FILE (stretched to --steps) and print test metrics."""
    check_numbers({"steps": steps, "samples": samples, "seed": seed})
    dev = resolve_device(device)
    try:
        rule = resolve_rule(optimizer)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--optimizer") from None
    schedule, meta = load_schedule_file(schedule_file, rule, "--schedule")
    if steps is None:
        steps = meta.get("retrain_steps")
        if not isinstance(steps, int) or steps < 1:
            raise click.BadParameter(f"{schedule_file} has no retrain_steps; give --steps", param_hint="--steps")
    try:
        kwargs: dict = {"samples": samples} if samples is not None else {}
        if task in VISION_TASKS:
            kwargs.update(data_root=data_root, augment=augment)
        the_task = resolve_task(task, **kwargs)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--task") from None
    result = retrain(the_task, rule, schedule, steps, seed + RETRAIN_SEED_OFFSET, DTYPES[dtype], dev)
    click.echo(f"test_acc={result.test_acc:.4f}  test_loss={result.test_loss:.4f}  "
               f"({steps} steps{', DIVERGED' if result.diverged else ''})")

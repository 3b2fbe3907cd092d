"""The ``hpo`` command line.  Every input error is one line on stderr and exit status 2."""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import click

from hpo.callbacks import CallbackList
from hpo.checkpoint import atomic_write, checkpoint_path
from hpo.cli_retrain import retrain_command
from hpo.cli_types import IntList, KeyValues, ensure_writable_dir, resolve_device
from hpo.console import ConsoleReporter, format_values
from hpo.determinism import use_deterministic_kernels
from hpo.device import DTYPES
from hpo.fds import FDSConfig, run_fds
from hpo.outer import OuterState
from hpo.registry import BUILTIN_BACKENDS, BUILTIN_RULES, BUILTIN_TASKS, resolve_backend, resolve_rule, resolve_task
from hpo.registry import VISION_TASKS
from hpo.resume import CheckpointWriter, resume_options
from hpo.retrain import retrain
from hpo.schedule import Schedule
from hpo.validation import check_numbers, check_split, load_schedule_file


class OneLineErrors(click.Group):
    """A click group whose usage errors are a single ``Error: ...`` line with exit status 2."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, **extra: Any) -> Any:  # type: ignore[override]
        """Run the command; turn usage errors and ``ValueError`` into one line and exit 2."""
        extra.pop("standalone_mode", None)
        try:
            rv = super().main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
        except click.UsageError as e:
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            click.echo(f"Error: {e.format_message()}{hint}", err=True)
            sys.exit(2)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(130)
        except click.ClickException as e:
            click.echo(f"Error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=OneLineErrors)
@click.version_option(package_name="hpo-long-horizon", prog_name="hpo")
def cli() -> None:
    """Gradient-based hyperparameter optimization over long horizons (FDS)."""


def fail(message: str, hint: str | None = None) -> None:
    """Stop with a one-line usage error (exit status 2)."""
    raise click.BadParameter(message, param_hint=hint)


@cli.command()
@click.option("--task", default="mnist1d-mlp", show_default=True,
              help=f"Task: {', '.join(BUILTIN_TASKS)} or module:attr.")
@click.option("--backend", default="forward-manual", show_default=True,
              help=f"Hypergradient backend: {', '.join(BUILTIN_BACKENDS)} or module:attr.")
@click.option("--optimizer", default="sgd", show_default=True,
              help=f"Update rule: {', '.join(BUILTIN_RULES)} or module:attr / file.py:attr "
                   "('hpo optimizers' lists each rule's hyperparameters, ranges and defaults).")
@click.option("--outer-steps", type=int, default=10, show_default=True, help="Number of outer (hyperparameter) steps.")
@click.option("--inner-steps", type=IntList(), default="30,300", show_default=True,
              help="Inner steps per outer step; the last entry repeats (e.g. 1 epoch, then 10).")
@click.option("--counts", type=KeyValues(int), default="", help="Shared values per type, e.g. lr=7,momentum=1,wd=1 (rule defaults).")
@click.option("--init", "init_values", type=KeyValues(float), default="", help="Initial values, e.g. lr=0,momentum=0 (rule defaults).")
@click.option("--steps", "step_sizes", type=KeyValues(float), default="", help="Initial outer steps, e.g. lr=0.1,wd=3e-4 (rule defaults).")
@click.option("--decay", type=float, default=0.5, show_default=True, help="Step multiplier when a hypergradient's sign flips.")
@click.option("--converged-frac", type=float, default=0.05, show_default=True, help="Stop when every step/|value| is below this.")
@click.option("--val-frac", type=float, default=0.05, show_default=True, help="Fresh validation fraction of the train set per outer step.")
@click.option("--batch-size", type=int, default=None, help="Inner minibatch size (task default).")
@click.option("--samples", type=int, default=None,
              help="MNIST-1D: number of generated samples (default 5000); vision tasks: keep the first N train images.")
@click.option("--data-root", type=click.Path(path_type=Path), default=Path("data"), show_default=True,
              help="Vision tasks: folder holding the datasets in torchvision's layout (e.g. data/MNIST/raw).")
@click.option("--download/--no-download", default=False, show_default=True,
              help="Vision tasks: download a missing dataset into --data-root (needs internet).")
@click.option("--augment", default=None, help="Vision tasks: minibatch augmentation, e.g. crop,flip or crop,flip,cutout.")
@click.option("--retrain-steps", type=int, default=None, help="Steps of the final retrain (default: the last inner horizon).")
@click.option("--baseline", type=KeyValues(float), default=None, help="Constant setting to compare with (rule's hand-picked one).")
@click.option("--grad-clip", type=float, default=None, help="Clamp inner gradients to +-C (authors' code: 3). Off by default.")
@click.option("--hz-clip", type=float, default=None, help="Clamp Hessian-tangent products to +-C (authors' code: 1). Off by default.")
@click.option("--compile/--no-compile", "compile_step", default=False, show_default=True,
              help="Forward-mode backends: torch.compile the inner step (worth it on a GPU for long runs).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of initialisations, splits and batches.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="float32", show_default=True)
@click.option("--logdir", type=click.Path(path_type=Path), default=None,
              help="TensorBoard logs and schedule.json (default runs/<time>).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")
@click.option("--schedule-init", type=click.Path(path_type=Path), default=None,
              help="Start from the schedule in this JSON file (e.g. an earlier schedule.json); sets --counts.")
@click.option("--resume", type=click.Path(path_type=Path), default=None,
              help="Continue the run in this LOGDIR from its last completed outer step, with its options.")
@click.option("--deterministic/--no-deterministic", default=False, show_default=True,
              help="Deterministic CUDA kernels (slower); CPU runs are deterministic anyway. See docs/determinism.md.")
def run(**o: Any) -> None:
    """Learn a hyperparameter schedule with FDS, then retrain and report test accuracy.

    A checkpoint is written to LOGDIR/checkpoint.pt after every outer step (docs/checkpoint-resume.md).
    """
    ckpt = None
    if o["resume"] is not None:
        ckpt, o = resume_options(click.get_current_context(), o)
    check_numbers(o)
    if o.get("deterministic"):
        use_deterministic_kernels()
    device = resolve_device(o["device"])
    dtype = DTYPES[o["dtype"]]
    try:
        rule = resolve_rule(o["optimizer"])
    except ValueError as e:
        fail(str(e), "--optimizer")
    try:
        backend = resolve_backend(o["backend"])
    except ValueError as e:
        fail(str(e), "--backend")
    if o["compile_step"]:
        from backends.forward import ForwardModeBackend

        if not isinstance(backend, ForwardModeBackend):
            fail(f"--compile applies to the forward-mode backends, not {backend.name!r}", "--compile")
        backend.compile = "inductor"
    start_state: OuterState | None = None
    counts = o["counts"]
    if ckpt is not None:
        start_state = ckpt.state
        try:
            Schedule(dict(ckpt.state.values)).check(rule)
        except ValueError as e:
            fail(f"the checkpoint does not fit optimizer {rule.name!r}: {e}", "--resume")
        counts = {n: v.numel() for n, v in ckpt.state.values.items()}
    elif o["schedule_init"] is not None:
        if o["counts"] or o["init_values"]:
            fail("give either --schedule-init or --counts/--init, not both", "--schedule-init")
        init_schedule, _ = load_schedule_file(o["schedule_init"], rule, "--schedule-init")
        counts = init_schedule.counts
    config = FDSConfig(
        outer_steps=o["outer_steps"], inner_steps=o["inner_steps"], counts=counts, init=o["init_values"],
        steps=o["step_sizes"], decay=o["decay"], converged_frac=o["converged_frac"], val_frac=o["val_frac"],
        batch_size=o["batch_size"], seed=o["seed"], grad_clip=o["grad_clip"], hz_clip=o["hz_clip"],
        dtype=dtype, device=device,
    )
    try:
        config.validate(rule)
    except ValueError as e:
        fail(str(e))
    try:
        backend.check_rule(rule)
    except ValueError as e:
        fail(str(e), "--backend")
    baseline = o["baseline"] if o["baseline"] is not None else rule.hand_picked
    if baseline is not None:
        try:
            Schedule.constant(baseline).check(rule)
        except ValueError as e:
            fail(str(e), "--baseline")
    if start_state is None and o["schedule_init"] is not None:
        start_state = OuterState.start(init_schedule.values, config.resolved_steps(rule))
    logdir = o["logdir"] or Path("runs") / time.strftime("hpo-%Y%m%d-%H%M%S")
    o["logdir"] = logdir
    ensure_writable_dir(logdir)
    if ckpt is None and checkpoint_path(logdir).exists():
        fail(f"{logdir} already holds a run; continue it with --resume {logdir} or choose another --logdir", "--logdir")
    try:
        task_kwargs: dict[str, Any] = {"samples": o["samples"]} if o["samples"] is not None else {}
        if o["task"] in VISION_TASKS:
            task_kwargs.update(data_root=o["data_root"], download=o["download"], augment=o["augment"])
        elif o["download"] or o["augment"]:
            fail(f"--download and --augment apply to the vision tasks ({', '.join(VISION_TASKS)}), not {o['task']!r}")
        task = resolve_task(o["task"], **task_kwargs).to(dtype=dtype, device=device)
    except ValueError as e:
        fail(str(e), "--task")
    check_split(task.train_x.shape[0], config.val_frac)
    retrain_steps = o["retrain_steps"] or config.horizon(config.outer_steps - 1)

    from hpo.tensorboard_log import TensorBoardLogger

    click.echo(f"task={task.name} backend={backend.name} optimizer={rule.name} device={device} dtype={o['dtype']} "
               f"train={task.train_x.shape[0]} test={task.test_x.shape[0]} logdir={logdir}")
    history = ckpt.history if ckpt is not None else ()
    if ckpt is not None:
        click.echo(f"resuming {logdir} after outer step {ckpt.state.k}/{config.outer_steps}")
    # A fresh run purges from step 0: leftovers of a run killed before its first checkpoint vanish.
    tb = TensorBoardLogger(logdir, purge_step=0 if ckpt is None else ckpt.state.k,
                           global_step=sum(r.steps_run for r in history))
    console = ConsoleReporter(config.outer_steps, show_progress=o["progress"])
    callbacks = CallbackList(console, tb)
    writer = CheckpointWriter(logdir, o, ckpt.search_seconds if ckpt is not None else 0.0)
    result = run_fds(task, rule, backend, config, callbacks, state=start_state, history=history, after_step=writer)
    search_seconds = writer.seconds()

    final = retrain(task, rule, result.schedule, retrain_steps, o["seed"] + 7919, dtype, device,
                    on_step=lambda t, loss: callbacks.on_retrain_step("learned", t, retrain_steps, loss))
    lines = [f"learned schedule   test_acc={final.test_acc:.4f}  test_loss={final.test_loss:.4f}  "
             f"({retrain_steps} steps{', DIVERGED' if final.diverged else ''})"]
    summary: dict[str, Any] = {"learned": final.__dict__}
    if baseline is not None:
        base = retrain(task, rule, Schedule.constant(baseline), retrain_steps, o["seed"] + 7919, dtype, device,
                       on_step=lambda t, loss: callbacks.on_retrain_step("hand-picked", t, retrain_steps, loss))
        desc = ", ".join(f"{k} {v:g}" for k, v in baseline.items())
        lines.append(f"hand-picked ({desc})  test_acc={base.test_acc:.4f}  test_loss={base.test_loss:.4f}  "
                     f"({retrain_steps} steps{', DIVERGED' if base.diverged else ''})")
        summary["hand_picked"] = {"hyper": baseline, **base.__dict__}
    out = {
        "optimizer": rule.name, "backend": backend.name, "task": task.name,
        "schedule": result.schedule.to_dict(), "retrain_steps": retrain_steps,
        "search_seconds": search_seconds, "results": summary,
        "history": [r.__dict__ for r in result.history],
    }
    text = json.dumps(out, indent=2) + "\n"
    atomic_write(logdir / "schedule.json", lambda f: f.write(text.encode()))
    tb.add_text("summary", "\n\n".join(lines), result.state.k)
    tb.close()
    click.echo(f"learned schedule: {format_values(result.schedule.to_dict())}")
    for line in lines:
        click.echo(line)
    click.echo(f"search took {search_seconds:.1f}s; wrote {logdir / 'schedule.json'} and TensorBoard logs "
               f"(tensorboard --logdir {logdir})")


@cli.command("optimizers")
@click.argument("names", nargs=-1)
def optimizers_cmd(names: tuple[str, ...]) -> None:
    """Show update rules (built-in or module:attr / file.py:attr) with their hyperparameters.

    Each row gives the valid range, the FDS defaults (initial value, outer step, number of shared
    values), the hand-picked baseline and what the outer loop does to the value after a diverged
    run.  With no NAMES, every built-in rule is shown.
    """
    from hpo.rule_table import describe_rule

    for i, spec in enumerate(names or tuple(BUILTIN_RULES)):
        try:
            rule = resolve_rule(spec)
        except ValueError as e:
            fail(str(e), "NAMES")
        click.echo(("\n" if i else "") + describe_rule(rule))


cli.add_command(retrain_command)


def main() -> None:
    """Console-script entry point."""
    # torch.func emits this while building its decompositions on first use; it is not ours to fix.
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    cli()


if __name__ == "__main__":
    main()

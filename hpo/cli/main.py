"""The ``hpo`` command line.  Every input error is one line on stderr and exit status 2."""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from hpo.callbacks import CallbackList
from hpo.checkpoint import atomic_write, checkpoint_path
from hpo.cli.resume import CheckpointWriter, resume_options
from hpo.cli.retrain import retrain_command
from hpo.cli.types import IntList, KeyValues, ensure_writable_dir, resolve_device
from hpo.cli.validation import check_numbers, check_split, load_schedule_file
from hpo.console import ConsoleReporter, format_values
from hpo.determinism import use_deterministic_kernels
from hpo.device import DTYPES
from hpo.fds import FDSConfig, run_fds
from hpo.outer import OuterState
from hpo.registry import (
    BUILTIN_BACKENDS,
    BUILTIN_RULES,
    BUILTIN_TASKS,
    VISION_TASKS,
    resolve_backend,
    resolve_rule,
    resolve_task,
)
from hpo.retrain import retrain
from hpo.schedule import Schedule


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


def with_window(backend: Any, window: int | None) -> Any:
    """``backend`` with ``--window`` applied (reverse-truncated only); one-line error otherwise."""
    if window is None:
        return backend
    from hpo.backends.reverse_truncated import ReverseTruncatedBackend

    if not isinstance(backend, ReverseTruncatedBackend):
        fail(f"applies only to the reverse-truncated backend, not {backend.name!r}", "--window")
    if window < 1:
        fail(f"must be at least 1, got {window}", "--window")
    return type(backend)(window)


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
@click.option("--window", type=int, default=None, help="reverse-truncated: backpropagate through the last W inner steps (default: all).")
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
        from hpo.backends.forward import ForwardModeBackend

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
    backend = with_window(backend, o.get("window"))
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


DEFAULT_METHODS = "forward-manual,greedy,reverse-truncated,online-greedy,random-constant,random-schedule,tpe,hand-picked"


def parse_seeds(text: str) -> tuple[int, ...]:
    """``0,1,2`` into a tuple of non-negative integers (one-line error otherwise)."""
    try:
        seeds = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        fail(f"expected integers separated by commas, got {text!r}", "--seeds")
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        fail(f"expected distinct non-negative integers, got {text!r}", "--seeds")
    return seeds


@cli.command()
@click.option("--task", default="mnist1d-mlp", show_default=True, help=f"Task: {', '.join(BUILTIN_TASKS)} or module:attr.")
@click.option("--optimizer", default="sgd", show_default=True, help=f"Update rule: {', '.join(BUILTIN_RULES)} or module:attr.")
@click.option("--methods", default=DEFAULT_METHODS, show_default=True,
              help="Comma-separated: hypergradient backends (FDS outer loop) and online-greedy, random-constant, "
                   "random-schedule, tpe, tpe-schedule, hand-picked.")
@click.option("--budget", type=IntList(), default="1000", show_default=True,
              help="Search budget in inner training steps; several values give accuracy-vs-budget points.")
@click.option("--inner-steps", type=int, default=100, show_default=True, help="Horizon T of every inner run (one outer step or trial).")
@click.option("--retrain-steps", type=int, default=None, help="Steps of each retrain from scratch (default: --inner-steps).")
@click.option("--seeds", default="0,1,2", show_default=True, help="Seeds to repeat the whole comparison with.")
@click.option("--space", default=None, help="Search space of the baselines, e.g. lr=1e-3:1:log,momentum=0:0.99,wd=1e-6:1e-2:log.")
@click.option("--counts", type=KeyValues(int), default="", help="Shared values per type (rule defaults), for FDS and schedule searches.")
@click.option("--hyper-lr", type=KeyValues(float), default="", help="online-greedy hyper-learning rates, e.g. lr=0.01,momentum=0.01,wd=1e-4.")
@click.option("--window", type=int, default=None, help="reverse-truncated: backpropagate through the last W inner steps (default: all).")
@click.option("--holdout-frac", type=float, default=0.1, show_default=True, help="Train fraction held out of every search for val acc.")
@click.option("--val-frac", type=float, default=0.05, show_default=True, help="Fresh validation fraction per outer step / trial.")
@click.option("--batch-size", type=int, default=None, help="Inner minibatch size (task default).")
@click.option("--samples", type=int, default=None, help="MNIST-1D: number of generated samples (default 5000).")
@click.option("--grad-clip", type=float, default=None, help="Clamp inner gradients to +-C. Off by default.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="float32", show_default=True)
@click.option("--logdir", type=click.Path(path_type=Path), default=None, help="Outputs (default runs/compare-<time>).")
def compare(**o: Any) -> None:
    """Compare backends and baselines at an equal budget of inner steps; retrain, tabulate, plot."""
    from hpo.baselines import resolve_space
    from hpo.compare import OTHER_METHODS, SEARCH_METHODS, CompareConfig, run_compare, write_outputs

    for name in ("inner_steps", "retrain_steps", "batch_size", "samples"):
        if o[name] is not None and o[name] < 1:
            fail(f"must be at least 1, got {o[name]}", "--" + name.replace("_", "-"))
    seeds = parse_seeds(o["seeds"])
    methods = tuple(m.strip() for m in o["methods"].split(",") if m.strip())
    if not methods or len(set(methods)) != len(methods):
        fail(f"expected distinct comma-separated methods, got {o['methods']!r}", "--methods")
    try:
        rule = resolve_rule(o["optimizer"])
    except ValueError as e:
        fail(str(e), "--optimizer")
    backends = {}
    for m in methods:
        if m in SEARCH_METHODS or m in OTHER_METHODS:
            continue
        try:
            backends[m] = resolve_backend(m)
        except ValueError as e:
            fail(f"{e} (or a baseline: {', '.join(SEARCH_METHODS + OTHER_METHODS)})", "--methods")
    if o["window"] is not None:
        if "reverse-truncated" not in backends:
            fail("applies only to the reverse-truncated backend, which is not among --methods", "--window")
        backends["reverse-truncated"] = with_window(backends["reverse-truncated"], o["window"])
    if "hand-picked" in methods and rule.hand_picked is None:
        fail(f"optimizer {rule.name!r} has no hand-picked setting", "--methods")
    try:
        space = resolve_space(rule, o["space"])
    except ValueError as e:
        fail(str(e), "--space")
    for k in o["hyper_lr"]:
        if k not in rule.hyper_names:
            fail(f"optimizer {rule.name!r} has no hyperparameter {k!r}", "--hyper-lr")
    device = resolve_device(o["device"])
    cfg = CompareConfig(
        methods=methods, budgets=o["budget"], horizon=o["inner_steps"], seeds=seeds,
        retrain_steps=o["retrain_steps"] or o["inner_steps"], space=space, counts=o["counts"],
        hyper_lr=o["hyper_lr"], holdout_frac=o["holdout_frac"], val_frac=o["val_frac"],
        batch_size=o["batch_size"], grad_clip=o["grad_clip"], dtype=DTYPES[o["dtype"]], device=device,
    )
    try:
        cfg.validate()
        FDSConfig(outer_steps=1, inner_steps=(cfg.horizon,), counts=cfg.counts, val_frac=cfg.val_frac,
                  batch_size=cfg.batch_size, grad_clip=cfg.grad_clip).validate(rule)
    except ValueError as e:
        fail(str(e))
    logdir = o["logdir"] or Path("runs") / time.strftime("compare-%Y%m%d-%H%M%S")
    ensure_writable_dir(logdir)
    try:
        task = resolve_task(o["task"], **({"samples": o["samples"]} if o["samples"] is not None else {}))
    except ValueError as e:
        fail(str(e), "--task")
    header = (f"task={task.name} optimizer={rule.name} budget={','.join(map(str, cfg.budgets))} inner steps "
              f"(T={cfg.horizon}) retrain={cfg.retrain_steps} seeds={','.join(map(str, seeds))} device={device} "
              f"dtype={o['dtype']}")
    click.echo(header)
    start = time.perf_counter()
    rows = run_compare(task, rule, cfg, backends, log=click.echo)
    paths = write_outputs(rows, cfg, logdir, header)
    click.echo(paths["md"].read_text().split("\n\n", 1)[1])
    click.echo(f"total {time.perf_counter() - start:.1f}s; wrote {', '.join(str(p) for p in paths.values())} "
               f"and TensorBoard logs (tensorboard --logdir {logdir})")


def main() -> None:
    """Console-script entry point."""
    # torch.func emits this while building its decompositions on first use; it is not ours to fix.
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    cli()


if __name__ == "__main__":
    main()

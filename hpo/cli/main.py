"""The ``hpo`` commands: each turns its options into a configuration and calls the application layer."""

from __future__ import annotations

import signal
import warnings
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from hpo.app.retrain import RetrainConfig, retrain_schedule
from hpo.app.run import resume, run
from hpo.cli.check_rule import check_rule_command
from hpo.cli.console import ConsoleReporter
from hpo.cli.errors import OneLineErrors, data_parallel_launch
from hpo.cli.types import GroupRules, IntList, KeyValues
from hpo.compare import compare, resume_compare
from hpo.compare_config import DEFAULT_METHODS, CompareConfig
from hpo.config import RunConfig
from hpo.coordinates import OUTER_SPACES
from hpo.device import DEVICE_CHOICES, DTYPES
from hpo.distributed import end_process
from hpo.fds import DIVERGENCE_RULES
from hpo.registry import BUILTIN_BACKENDS, BUILTIN_RULES, BUILTIN_TASKS, SEARCH_METHODS, resolve_rule
from hpo.rule_table import describe_rule


@click.group(cls=OneLineErrors)
@click.version_option(package_name="hpo-long-horizon", prog_name="hpo")
def cli() -> None:
    """Gradient-based hyperparameter optimization over long horizons (FDS)."""


def given_on_command_line(options: dict[str, Any]) -> dict[str, Any]:
    """The options the user typed (not click's defaults)."""
    ctx = click.get_current_context()
    explicit = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    return {k: v for k, v in options.items() if ctx.get_parameter_source(k) in explicit}


def as_config_values(options: dict[str, Any]) -> dict[str, Any]:
    """click's values in the configuration's plain types (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in options.items()}


@cli.command("run")
@click.option("--task", default="mnist1d-mlp", show_default=True,
              help=f"Task: {', '.join(BUILTIN_TASKS)} or module:attr.")
@click.option("--backend", default="auto", show_default=True,
              help=f"Hypergradient backend: {', '.join(BUILTIN_BACKENDS)} or module:attr "
                   "(auto: the exact backend with the lowest predicted cost, docs/backend-choice.md).")
@click.option("--optimizer", default="sgd", show_default=True,
              help=f"Update rule: {', '.join(BUILTIN_RULES)} or module:attr / file.py:attr "
                   "('hpo optimizers' lists each rule's hyperparameters, ranges and defaults).")
@click.option("--outer-steps", type=int, default=10, show_default=True, help="Number of outer (hyperparameter) steps.")
@click.option("--inner-steps", type=IntList(), default="30,300", show_default=True,
              help="Inner steps per outer step; the last entry repeats (e.g. 1 epoch, then 10).")
@click.option("--counts", type=KeyValues(int), default="", help="Shared values per type, e.g. lr=7,momentum=1,wd=1 (rule defaults).")
@click.option("--init", type=KeyValues(float), default="", help="Initial values, e.g. lr=0,momentum=0 (rule defaults).")
@click.option("--steps", type=KeyValues(float), default="", help="Initial outer steps, e.g. lr=0.1,wd=3e-4 (rule defaults).")
@click.option("--groups", type=GroupRules(), default="",
              help="Share a type's values per parameter group, e.g. lr=layer,wd=bias-vs-rest or lr=conv*,fc*,bias "
                   "(first matching pattern wins); default all (docs/per-group-schedules.md).")
@click.option("--decay", type=float, default=0.5, show_default=True, help="Step multiplier when a hypergradient's sign flips.")
@click.option("--grow", type=float, default=1.0, show_default=True,
              help="Step multiplier when a hypergradient's sign holds (1: the authors' update; e.g. 1.2: Rprop's growth, uncapped).")
@click.option("--magnitude", type=float, default=0.0, show_default=True,
              help="Scale each move by |hypergradient| / its type's median, clamped to [1/C, C] with this C "
                   "(0: off, the authors' sign-only move; docs/concepts/outer-update.md).")
@click.option("--divergence", type=click.Choice(list(DIVERGENCE_RULES)), default="lower", show_default=True,
              help="After a diverged inner run: lower the values in force (halve them), or backtrack halfway to the "
                   "last values that trained (docs/divergence.md).")
@click.option("--outer-space", type=click.Choice(list(OUTER_SPACES)), default="linear", show_default=True,
              help="Coordinates of the sign steps: additive (the authors'), or log: learning rates and weight decay "
                   "doubled or halved, momentum's distance to 1 likewise, starting from the hand-picked setting "
                   "(docs/concepts/outer-update.md).")
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
@click.option("--compile/--no-compile", default=False, show_default=True,
              help="forward-manual, forward-jvp, reverse-checkpointed and auto: torch.compile the inner step (worth it on a GPU, and for small models on a CPU).")
@click.option("--window", type=int, default=None, help="reverse-truncated: backpropagate through the last W inner steps (default: all).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of initialisations, splits and batches.")
@click.option("--device", type=click.Choice(list(DEVICE_CHOICES)), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="float32", show_default=True)
@click.option("--deterministic/--no-deterministic", default=False, show_default=True,
              help="Deterministic CUDA kernels (slower); CPU runs are deterministic anyway. See docs/determinism.md.")
@click.option("--threads", type=int, default=None,
              help="CPU threads of this process (default 1, so runs side by side do not slow each other; "
                   "give more for a large model running alone).")
@click.option("--logdir", type=click.Path(path_type=Path), default=None,
              help="TensorBoard logs, checkpoint and schedule.json (default runs/hpo-<time>-<id>).")
@click.option("--schedule-init", type=click.Path(path_type=Path), default=None,
              help="Start from the schedule in this JSON file (e.g. an earlier schedule.json); sets --counts.")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path), default=None,
              help="Continue the run in this LOGDIR from its last completed outer step, with its settings "
                   "(only --outer-steps, --device and --threads may change).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")
def run_command(resume_dir: Path | None = None, progress: bool = True, **options: Any) -> None:
    """Learn a hyperparameter schedule with FDS, then retrain and report test accuracy.

    A checkpoint is written to LOGDIR/checkpoint.pt after every outer step (docs/checkpoint-resume.md).
    Launched as `torchrun --nproc-per-node N -m hpo run ...`, the inner loop runs data-parallel
    over N processes (docs/distributed.md).
    """
    console = ConsoleReporter(show_progress=progress)
    values = as_config_values(options)
    if resume_dir is not None:
        resume(resume_dir, as_config_values(given_on_command_line(options)), callbacks=[console])
    else:
        run(RunConfig(**values), callbacks=[console])


@cli.command("optimizers")
@click.argument("names", nargs=-1)
def optimizers_command(names: tuple[str, ...]) -> None:
    """Show update rules (built-in or module:attr / file.py:attr) with their hyperparameters.

    Each row gives the valid range, the FDS defaults (initial value, outer step, number of shared
    values), the default search range of the black-box baselines, the hand-picked baseline and
    what the outer loop does to the value after a diverged run.  With no NAMES, every built-in rule
    is shown.
    """
    for i, spec in enumerate(names or tuple(BUILTIN_RULES)):
        try:
            rule = resolve_rule(spec)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="NAMES") from None
        click.echo(("\n" if i else "") + describe_rule(rule))


@cli.command("retrain")
@click.option("--schedule", type=click.Path(path_type=Path), required=True,
              help="Schedule JSON: an 'hpo run' schedule.json or the output of Schedule.save.")
@click.option("--task", default=None, help=f"Task: {', '.join(BUILTIN_TASKS)} or module:attr (default: as the file records).")
@click.option("--optimizer", default=None,
              help=f"Update rule: {', '.join(BUILTIN_RULES)} or module:attr (default: as the file records).")
@click.option("--steps", type=int, default=None,
              help="Training steps; the schedule is stretched to them (default: retrain_steps in the file).")
@click.option("--samples", type=int, default=None, help="MNIST-1D: number of generated samples (default: as recorded).")
@click.option("--data-root", type=click.Path(path_type=Path), default=None,
              help="Vision tasks: folder holding the datasets (default: as the file records, else data).")
@click.option("--augment", default=None, help="Vision tasks: minibatch augmentation, e.g. crop,flip (default: as recorded).")
@click.option("--seed", type=int, default=None, help="Same meaning as 'hpo run --seed' (default: as recorded, else 0).")
@click.option("--device", type=click.Choice(list(DEVICE_CHOICES)), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(list(DTYPES)), default=None, help="float32 or float64 (default: as recorded).")
@click.option("--groups", type=GroupRules(), default=None,
              help="Grouping rules of a grouped schedule, e.g. lr=layer (default: as the file records).")
def retrain_command(**options: Any) -> None:
    """Retrain from scratch with the schedule in FILE (stretched to --steps) and print test metrics."""
    config = RetrainConfig(**as_config_values(options))
    result = retrain_schedule(config)
    click.echo(f"test_acc={result.test_acc:.4f}  test_loss={result.test_loss:.4f}  "
               f"({config.resolved_steps} steps{', DIVERGED' if result.diverged else ''})")


def parse_list(text: str, field: str, kind: type) -> tuple[Any, ...]:
    """``a,b,c`` into a tuple of ``kind`` (one-line error otherwise)."""
    try:
        return tuple(kind(p.strip()) for p in text.split(",") if p.strip())
    except ValueError:
        raise click.BadParameter(f"expected {kind.__name__} values separated by commas, got {text!r}",
                                 param_hint=field) from None


@cli.command("compare")
@click.option("--task", default="mnist1d-mlp", show_default=True, help=f"Task: {', '.join(BUILTIN_TASKS)} or module:attr.")
@click.option("--optimizer", default="sgd", show_default=True, help=f"Update rule: {', '.join(BUILTIN_RULES)} or module:attr.")
@click.option("--methods", default=",".join(DEFAULT_METHODS), show_default=True,
              help=f"Comma-separated: hypergradient backends (FDS outer loop) and {', '.join(SEARCH_METHODS)}.")
@click.option("--budget", type=IntList(), default="1000", show_default=True,
              help="Search budget in inner training steps; several values give accuracy-vs-budget points.")
@click.option("--budget-seconds", type=float, default=None,
              help="Also stop each method's search after this many seconds of wall-clock time (equal time).")
@click.option("--jobs", type=int, default=1, show_default=True,
              help="Run this many (seed, method) pairs at once, in separate processes with cores/jobs threads each.")
@click.option("--inner-steps", type=int, default=100, show_default=True, help="Horizon T of every inner run (one outer step or trial).")
@click.option("--retrain-steps", type=int, default=None, help="Steps of each retrain from scratch (default: --inner-steps).")
@click.option("--seeds", default="0,1,2", show_default=True, help="Seeds to repeat the whole comparison with.")
@click.option("--space", default=None,
              help="Search space of the baselines, e.g. lr=1e-3:1:log,momentum=0:0.99 (default: each rule's own).")
@click.option("--counts", type=KeyValues(int), default="", help="Shared values per type (rule defaults), for FDS and schedule searches.")
@click.option("--hyper-lr", type=KeyValues(float), default="", help="online-greedy hyper-learning rates, e.g. lr=0.01,momentum=0.01,wd=1e-4.")
@click.option("--window", type=int, default=None, help="reverse-truncated: backpropagate through the last W inner steps (default: all).")
@click.option("--short-steps", type=int, default=0, show_default=True,
              help="FDS methods: the first N outer steps over one epoch, then the horizon (multi-fidelity).")
@click.option("--grow", type=float, default=1.0, show_default=True,
              help="FDS methods: step multiplier when a hypergradient's sign holds (1: the authors' update).")
@click.option("--magnitude", type=float, default=0.0, show_default=True,
              help="FDS methods: scale each move by |hypergradient| / its type's median, clamped to [1/C, C] (0: off).")
@click.option("--divergence", type=click.Choice(list(DIVERGENCE_RULES)), default="lower", show_default=True,
              help="FDS methods: after a diverged inner run, lower the values in force or backtrack halfway to the "
                   "last values that trained.")
@click.option("--outer-space", type=click.Choice(list(OUTER_SPACES)), default="linear", show_default=True,
              help="FDS methods: additive sign steps (the authors'), or multiplicative ones from the hand-picked "
                   "setting (log).")
@click.option("--steps", type=KeyValues(float), default="",
              help="FDS methods: initial outer steps, e.g. lr=0.2,momentum=0.2 (rule defaults).")
@click.option("--init", type=KeyValues(float), default="",
              help="FDS methods: starting values, e.g. lr=0.1,momentum=0.9,wd=5e-4 (rule defaults).")
@click.option("--keep-best", is_flag=True, default=False,
              help="FDS methods: score the last schedule with one plain run and keep the best one seen.")
@click.option("--population", type=int, default=None,
              help="pbt: members of the population (default: budget / T); set it when --budget-seconds binds.")
@click.option("--holdout-frac", type=float, default=0.1, show_default=True, help="Train fraction held out of every search for val acc.")
@click.option("--val-frac", type=float, default=0.05, show_default=True, help="Fresh validation fraction per outer step / trial.")
@click.option("--batch-size", type=int, default=None, help="Inner minibatch size (task default).")
@click.option("--samples", type=int, default=None, help="MNIST-1D: number of generated samples (default 5000).")
@click.option("--grad-clip", type=float, default=None, help="Clamp inner gradients to +-C. Off by default.")
@click.option("--device", type=click.Choice(list(DEVICE_CHOICES)), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="float32", show_default=True)
@click.option("--logdir", type=click.Path(path_type=Path), default=None,
              help="Outputs and compare-checkpoint.json (default runs/compare-<time>-<id>); a directory that "
                   "already holds a comparison is refused.")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path), default=None,
              help="Continue the comparison in this LOGDIR: finished (seed, method) pairs are kept, the others run "
                   "(its stored settings; only --device may change).")
def compare_command(seeds: str, methods: str, resume_dir: Path | None = None, **options: Any) -> None:
    """Compare backends and baselines at an equal budget of inner steps; retrain, tabulate, plot.

    A checkpoint is written to LOGDIR/compare-checkpoint.json after every (seed, method) pair.
    """
    if resume_dir is not None:
        given = given_on_command_line({"seeds": seeds, "methods": methods, **options})
        if "seeds" in given:
            given["seeds"] = parse_list(seeds, "--seeds", int)
        if "methods" in given:
            given["methods"] = parse_list(methods, "--methods", str)
        _, paths = resume_compare(resume_dir, as_config_values(given), log=click.echo)
    else:
        config = CompareConfig(seeds=parse_list(seeds, "--seeds", int),
                               methods=parse_list(methods, "--methods", str), **as_config_values(options))
        _, paths = compare(config, log=click.echo)
    click.echo(paths["md"].read_text().split("\n\n", 1)[1])
    click.echo(f"wrote {', '.join(str(p) for p in paths.values())} and TensorBoard logs "
               f"(tensorboard --logdir {paths['md'].parent})")


cli.add_command(check_rule_command)


def main() -> None:
    """Console-script entry point."""
    # torch.func emits this while building its decompositions on first use; it is not ours to fix.
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    signal.signal(signal.SIGTERM, stop_on_sigterm)  # SIGTERM stops like Ctrl-C: it says how to resume
    try:
        cli()
    except SystemExit as e:
        if data_parallel_launch():  # see hpo.distributed.end_process: gloo can abort the interpreter's shutdown
            end_process(e.code)
        raise


def stop_on_sigterm(signum: int, frame: object) -> None:
    """Turn SIGTERM into ``KeyboardInterrupt``, so a run stops with its resume hint."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()

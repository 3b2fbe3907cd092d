"""The ``hpo`` commands: each turns its options into a configuration and calls the application layer."""

from __future__ import annotations

import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, final

import click
from click.core import ParameterSource

from hpo.app.compare import compare, resume_compare
from hpo.app.compare_config import CompareConfig
from hpo.app.config import RunConfig
from hpo.app.registry import (
    BUILTIN_RULES,
    BUILTIN_TASKS,
    resolve_rule,
)
from hpo.app.retrain import RetrainConfig, retrain_schedule
from hpo.app.run import metrics_text, resume, run
from hpo.cli.check_rule import check_rule_command
from hpo.cli.console import ConsoleReporter
from hpo.cli.errors import OneLineErrors, data_parallel_launch
from hpo.cli.options import SectionedCommand, options
from hpo.reporting.rule_table import describe_rule
from hpo.runtime.distributed import end_process


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


@cli.command("run", cls=SectionedCommand)
@options("task", "optimizer", "samples", "label_noise", "data_root", "download", "augment", "batch_size", "val_frac",
         "counts", "init", "groups", "loss_hypers", "baseline", "schedule_init",
         "outer_steps", "inner_steps", "outer", "outer_options", "steps", "divergence", "outer_space", "converged_frac",
         "backend", "window", "compile", "memory_budget", "grad_clip", "hz_clip",
         "seed", "retrain_steps", "device", "dtype", "deterministic", "threads", "resume",
         "logdir", "progress")
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


@cli.command("retrain", cls=SectionedCommand)
@options("schedule", "task", "optimizer", "samples", "label_noise", "data_root", "augment", "groups", "loss_hypers",
         "train_steps", "seed", "device", "dtype",
         loss_hypers={"default": None, "help": "The loss hyperparameters the schedule holds (default: as recorded)."},
         label_noise={"help": "MNIST-1D: the label noise of the run (default: as recorded)."},
         task={"default": None, "show_default": False,
               "help": f"Task: {', '.join(BUILTIN_TASKS)} or module:attr (default: as the file records)."},
         optimizer={"default": None, "show_default": False,
                    "help": f"Update rule: {', '.join(BUILTIN_RULES)} or module:attr (default: as the file records)."},
         samples={"help": "MNIST-1D: number of generated samples (default: as recorded)."},
         data_root={"default": None, "show_default": False,
                    "help": "Vision tasks: folder holding the datasets (default: as the file records, else data)."},
         augment={"help": "Vision tasks: minibatch augmentation, e.g. crop,flip (default: as recorded)."},
         groups={"default": None, "help": "Grouping rules of a grouped schedule, e.g. lr=layer (default: as the file "
                                          "records)."},
         seed={"default": None, "show_default": False,
               "help": "Same meaning as 'hpo run --seed' (default: as recorded, else 0)."},
         dtype={"default": None, "show_default": False, "help": "float32 or float64 (default: as recorded)."})
def retrain_command(steps: int | None = None, **options: Any) -> None:
    """Retrain from scratch with the schedule in FILE (stretched to --steps) and print test metrics."""
    config = RetrainConfig(steps=steps, **as_config_values(options))
    result = retrain_schedule(config)
    click.echo(f"{metrics_text(result)}  ({config.resolved_steps} steps{', DIVERGED' if result.diverged else ''})")


def parse_list(text: str, field: str, kind: type) -> tuple[Any, ...]:
    """``a,b,c`` into a tuple of ``kind`` (one-line error otherwise)."""
    try:
        return tuple(kind(p.strip()) for p in text.split(",") if p.strip())
    except ValueError:
        raise click.BadParameter(f"expected {kind.__name__} values separated by commas, got {text!r}",
                                 param_hint=field) from None


@cli.command("compare", cls=SectionedCommand)
@options("task", "optimizer", "samples", "label_noise", "batch_size", "val_frac", "holdout_frac",
         "counts", "init", "loss_hypers", "space", "hyper_lr",
         "horizon", "outer", "outer_options", "steps", "divergence", "outer_space", "short_steps", "keep_best",
         "methods", "window", "grad_clip", "population", "stn_options",
         "seeds", "budget", "budget_seconds", "jobs", "retrain_steps", "device", "dtype", "resume",
         "logdir",
         retrain_steps={"help": "Steps of each retrain from scratch (default: --inner-steps)."},
         samples={"help": "MNIST-1D: number of generated samples (default 5000)."})
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
    SigtermStop().install()  # SIGTERM stops like Ctrl-C: it says how to resume
    try:
        cli()
    except SystemExit as e:
        if data_parallel_launch():  # see hpo.runtime.distributed.end_process: gloo can abort the interpreter's shutdown
            end_process(e.code)
        raise


@final
class SigtermStop:
    """SIGTERM stops a command as Ctrl-C does (``KeyboardInterrupt``), so a run says how to resume.

    Only the first SIGTERM raises: a later one would cut short the cleanup that writes the resume
    line.  Python drops an exception raised in a finalizer or weakref callback ("Exception ignored
    in ..."), which the garbage collector runs between any two bytecodes; a stop dropped there
    would leave the run going, so it is raised again a moment later.
    """

    def __init__(self) -> None:
        self.stopping = False
        self.unraisable = sys.unraisablehook

    def install(self) -> None:
        """Handle SIGTERM in this process, and catch the stops Python drops."""
        self.unraisable = sys.unraisablehook
        sys.unraisablehook = self.on_unraisable
        signal.signal(signal.SIGTERM, self.on_sigterm)

    def on_sigterm(self, signum: int, frame: object) -> None:
        """Raise ``KeyboardInterrupt``, unless a stop is under way."""
        if not self.stopping:
            self.stopping = True
            raise KeyboardInterrupt

    def on_unraisable(self, unraisable: sys.UnraisableHookArgs) -> None:
        """Have another thread send a dropped stop's SIGTERM again (raising here would be dropped too)."""
        if not (self.stopping and issubclass(unraisable.exc_type, KeyboardInterrupt)):
            self.unraisable(unraisable)
            return
        self.stopping = False
        again = threading.Timer(0.05, signal.pthread_kill, (threading.main_thread().ident, signal.SIGTERM))
        again.daemon = True
        again.start()


if __name__ == "__main__":
    main()

"""Every option of the ``hpo`` commands, declared once, under the heading ``--help`` shows it in.

A command lists the options it takes by name (``@options("task", "optimizer", ...)``), so an
option shared by ``run``, ``compare`` and ``retrain`` has one flag, one type and one help text;
a command that needs another default passes it (``options(..., task={"default": None})``).  A
new configuration field is one line in :data:`OPTIONS` and one name in a command's list.  The
flag of a field is ``--`` and the field with dashes (``outer_steps`` is ``--outer-steps``), which
is how the one-line errors name it (:mod:`hpo.cli.errors`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, final

import click

from hpo.app.compare_config import DEFAULT_METHODS
from hpo.app.registry import BUILTIN_BACKENDS, BUILTIN_RULES, BUILTIN_TASKS, OUTER_OPTIMIZERS, SEARCH_METHODS
from hpo.cli.types import GroupRules, IntList, KeyValues
from hpo.outer.coordinates import OUTER_SPACES
from hpo.outer.divergence import DIVERGENCE_RULES
from hpo.runtime.device import DEVICE_CHOICES, DTYPES

PROBLEM, HYPER, OUTER, BACKEND, CONTROL, OUTPUTS = (
    "Problem", "Hyperparameters", "Outer loop", "Backend and methods", "Run control", "Outputs")
#: The headings of ``--help``, in the order shown.
HEADINGS = (PROBLEM, HYPER, OUTER, BACKEND, CONTROL, OUTPUTS)


@final
class HeadedOption(click.Option):
    """A click option that knows the heading it is listed under."""

    def __init__(self, param_decls: Sequence[str], heading: str = CONTROL, **attrs: Any) -> None:
        super().__init__(param_decls, **attrs)
        self.heading = heading


@final
class SectionedCommand(click.Command):
    """A click command whose ``--help`` lists its options under :data:`HEADINGS`."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """One section per heading, in :data:`HEADINGS` order; ``--help`` and the like last."""
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(getattr(param, "heading", "Other"), []).append(record)
        for heading in (*HEADINGS, "Other"):
            if heading in sections:
                with formatter.section(heading):
                    formatter.write_dl(sections[heading])


def option(heading: str, *decls: str, **attrs: Any) -> Callable[..., Callable[[Any], Any]]:
    """A declaration: called with overrides (e.g. ``default=None``), it returns the click decorator."""
    def build(**overrides: Any) -> Callable[[Any], Any]:
        return click.option(*decls, cls=HeadedOption, heading=heading, **{**attrs, **overrides})
    return build


FDS = " In hpo compare: FDS methods only."

#: Every option by name: one declaration each.
OPTIONS: dict[str, Callable[..., Callable[[Any], Any]]] = {
    # Problem
    "task": option(PROBLEM, "--task", default="mnist1d-mlp", show_default=True,
                   help=f"Task: {', '.join(BUILTIN_TASKS)} or module:attr / file.py:attr."),
    "optimizer": option(PROBLEM, "--optimizer", default="sgd", show_default=True,
                        help=f"Update rule: {', '.join(BUILTIN_RULES)} or module:attr / file.py:attr "
                             "('hpo optimizers' lists each rule's hyperparameters, ranges and defaults)."),
    "samples": option(PROBLEM, "--samples", type=int, default=None,
                      help="MNIST-1D: number of generated samples (default 5000); vision tasks: keep the first N "
                           "train images."),
    "data_root": option(PROBLEM, "--data-root", type=click.Path(path_type=Path), default=Path("data"),
                        show_default=True,
                        help="Vision tasks: folder holding the datasets in torchvision's layout (e.g. data/MNIST/raw)."),
    "download": option(PROBLEM, "--download/--no-download", default=False, show_default=True,
                       help="Vision tasks: download a missing dataset into --data-root (needs internet)."),
    "augment": option(PROBLEM, "--augment", default=None,
                      help="Vision tasks: minibatch augmentation, e.g. crop,flip or crop,flip,cutout."),
    "batch_size": option(PROBLEM, "--batch-size", type=int, default=None, help="Inner minibatch size (task default)."),
    "val_frac": option(PROBLEM, "--val-frac", type=float, default=0.05, show_default=True,
                       help="Fresh validation fraction of the train set per outer step (or trial)."),
    "holdout_frac": option(PROBLEM, "--holdout-frac", type=float, default=0.1, show_default=True,
                           help="Train fraction held out of every search for validation accuracy."),
    "schedule": option(PROBLEM, "--schedule", type=click.Path(path_type=Path), required=True,
                       help="Schedule JSON: an 'hpo run' schedule.json or the output of Schedule.save."),
    # Hyperparameters
    "counts": option(HYPER, "--counts", type=KeyValues(int), default="",
                     help="Shared values per type, e.g. lr=7,momentum=1,wd=1 (rule defaults)."),
    "init": option(HYPER, "--init", type=KeyValues(float), default="",
                   help="Starting values, e.g. lr=0,momentum=0 (rule defaults)." + FDS),
    "groups": option(HYPER, "--groups", type=GroupRules(), default="",
                     help="Share a type's values per parameter group, e.g. lr=layer,wd=bias-vs-rest or "
                          "lr=conv*,fc*,bias (first matching pattern wins); default all "
                          "(docs/per-group-schedules.md)."),
    "baseline": option(HYPER, "--baseline", type=KeyValues(float), default=None,
                       help="Constant setting to compare with (the rule's hand-picked one)."),
    "schedule_init": option(HYPER, "--schedule-init", type=click.Path(path_type=Path), default=None,
                            help="Start from the schedule in this JSON file (e.g. an earlier schedule.json); "
                                 "sets --counts."),
    "loss_hypers": option(HYPER, "--loss-hypers", default="",
                          help="Tune hyperparameters of the loss too, any of example_weight,class_weight,l2,"
                               "label_smoothing,input_noise (docs/how-to/loss-hyperparameters.md)."),
    "label_noise": option(PROBLEM, "--label-noise", type=float, default=None,
                          help="MNIST-1D: replace a seeded fraction P of the training labels by other classes; "
                               "a clean tenth of the training set becomes the validation set."),
    "space": option(HYPER, "--space", default=None,
                    help="Search space of the baselines, e.g. lr=1e-3:1:log,momentum=0:0.99 (default: each rule's "
                         "own)."),
    "hyper_lr": option(HYPER, "--hyper-lr", type=KeyValues(float), default="",
                       help="online-greedy hyper-learning rates, e.g. lr=0.01,momentum=0.01,wd=1e-4."),
    # Outer loop
    "outer_steps": option(OUTER, "--outer-steps", type=int, default=10, show_default=True,
                          help="Number of outer (hyperparameter) steps."),
    "inner_steps": option(OUTER, "--inner-steps", type=IntList(), default="30,300", show_default=True,
                          help="Inner steps per outer step; the last entry repeats (e.g. 1 epoch, then 10)."),
    "horizon": option(OUTER, "--inner-steps", "inner_steps", type=int, default=100, show_default=True,
                      help="Horizon T of every inner run (one outer step or trial)."),
    "outer": option(OUTER, "--outer", type=click.Choice(["auto", *OUTER_OPTIMIZERS]), default="auto",
                    show_default=True,
                    help="Outer optimizer: sign (the authors'), rprop, sign-magnitude or adam; auto is sign, or adam "
                         "when a weight per training example is tuned (docs/concepts/outer-update.md)." + FDS),
    "outer_options": option(OUTER, "--outer-option", "outer_options", type=KeyValues(float), default="",
                            help="Options of the outer optimizer, e.g. decay=0.5 (every sign optimizer), "
                                       "grow=1.2 (rprop), cap=2 (sign-magnitude), beta1=0.9,beta2=0.999 (adam)." + FDS),
    "steps": option(OUTER, "--steps", type=KeyValues(float), default="",
                    help="Initial outer steps (adam: its learning rates), e.g. lr=0.1,wd=3e-4 (rule defaults)." + FDS),
    "divergence": option(OUTER, "--divergence", type=click.Choice(list(DIVERGENCE_RULES)), default="lower",
                         show_default=True,
                         help="After a diverged inner run: lower the values in force (halve them), or "
                                    "backtrack halfway to the last values that trained (docs/divergence.md)." + FDS),
    "outer_space": option(OUTER, "--outer-space", type=click.Choice(list(OUTER_SPACES)), default="linear",
                          show_default=True,
                          help="Coordinates of the outer steps: additive (the authors'), or log: learning "
                                     "rates and weight decay doubled or halved, momentum's distance to 1 likewise, "
                                     "starting from the hand-picked setting (docs/concepts/outer-update.md)." + FDS),
    "converged_frac": option(OUTER, "--converged-frac", type=float, default=0.05, show_default=True,
                             help="Stop when every step/|value| is below this."),
    "short_steps": option(OUTER, "--short-steps", type=int, default=0, show_default=True,
                          help="The first N outer steps over one epoch, then the horizon (multi-fidelity)." + FDS),
    "keep_best": option(OUTER, "--keep-best", is_flag=True, default=False,
                        help="Score the last schedule with one plain run and keep the best one seen." + FDS),
    # Backend and methods
    "backend": option(BACKEND, "--backend", default="auto", show_default=True,
                      help=f"Hypergradient backend: {', '.join(BUILTIN_BACKENDS)} or module:attr (auto: the exact "
                           "backend with the lowest predicted cost, docs/backend-choice.md)."),
    "methods": option(BACKEND, "--methods", default=",".join(DEFAULT_METHODS), show_default=True,
                      help=f"Comma-separated: hypergradient backends (FDS outer loop) and "
                           f"{', '.join(SEARCH_METHODS)}."),
    "window": option(BACKEND, "--window", type=int, default=None,
                     help="reverse-truncated: backpropagate through the last W inner steps (default: all)."),
    "compile": option(BACKEND, "--compile/--no-compile", default=False, show_default=True,
                      help="forward-manual, forward-jvp, reverse-checkpointed and auto: torch.compile the inner step "
                           "(worth it on a GPU, and for small models on a CPU)."),
    "memory_budget": option(BACKEND, "--memory-budget", default=None,
                            help="reverse-checkpointed and auto: memory for stored inner states, e.g. 512MiB, 2GB "
                                 "(default: half the free memory); every state is kept when all fit."),
    "grad_clip": option(BACKEND, "--grad-clip", type=float, default=None,
                        help="Clamp inner gradients to +-C (authors' code: 3). Off by default."),
    "hz_clip": option(BACKEND, "--hz-clip", type=float, default=None,
                      help="Clamp Hessian-tangent products to +-C (authors' code: 1). Off by default."),
    "stn_options": option(BACKEND, "--stn-option", "stn_options", type=KeyValues(float), default="",
                          help="stn: its options, e.g. weight_steps=5,hyper_steps=1 (their ratio), sigma=0.5 (the "
                               "perturbation scale), tau=0.001, hyper_lr=0.03, per_layer=1."),
    "population": option(BACKEND, "--population", type=int, default=None,
                         help="pbt: members of the population (default: budget / T); set it when --budget-seconds "
                              "binds."),
    # Run control
    "seed": option(CONTROL, "--seed", type=int, default=0, show_default=True,
                   help="Seed of initialisations, splits and batches."),
    "seeds": option(CONTROL, "--seeds", default="0,1,2", show_default=True,
                    help="Seeds to repeat the whole comparison with."),
    "budget": option(CONTROL, "--budget", type=IntList(), default="1000", show_default=True,
                     help="Search budget in inner training steps; several values give accuracy-vs-budget points."),
    "budget_seconds": option(CONTROL, "--budget-seconds", type=float, default=None,
                             help="Also stop each method's search after this many seconds of wall-clock time "
                                  "(equal time)."),
    "jobs": option(CONTROL, "--jobs", type=int, default=1, show_default=True,
                   help="Run this many (seed, method) pairs at once, in separate processes with cores/jobs threads "
                        "each."),
    "retrain_steps": option(CONTROL, "--retrain-steps", type=int, default=None,
                            help="Steps of the final retrain from scratch (default: the last inner horizon)."),
    "train_steps": option(CONTROL, "--steps", type=int, default=None,
                          help="Training steps; the schedule is stretched to them (default: retrain_steps in the "
                               "file)."),
    "device": option(CONTROL, "--device", type=click.Choice(list(DEVICE_CHOICES)), default="auto", show_default=True,
                     help="Where to compute (auto: CUDA when there is one)."),
    "dtype": option(CONTROL, "--dtype", type=click.Choice(list(DTYPES)), default="float32", show_default=True,
                    help="Floating-point type of the weights and hyperparameters."),
    "deterministic": option(CONTROL, "--deterministic/--no-deterministic", default=False, show_default=True,
                            help="Deterministic CUDA kernels (slower); CPU runs are deterministic anyway. See "
                                 "docs/determinism.md."),
    "threads": option(CONTROL, "--threads", type=int, default=None,
                      help="CPU threads of this process (default 1, so runs side by side do not slow each other; "
                           "give more for a large model running alone)."),
    "resume": option(CONTROL, "--resume", "resume_dir", type=click.Path(path_type=Path), default=None,
                     help="Continue the run (or comparison) in this LOGDIR from its checkpoint, with its stored "
                          "settings (run: only --outer-steps, --device and --threads may change; compare: only "
                          "--device)."),
    # Outputs
    "logdir": option(OUTPUTS, "--logdir", type=click.Path(path_type=Path), default=None,
                     help="Outputs, TensorBoard logs and the checkpoint (default runs/<command>-<time>-<id>); a "
                          "directory that already holds a comparison is refused."),
    "progress": option(OUTPUTS, "--progress/--no-progress", default=True, show_default=True, help="Show progress bars."),
}


def options(*names: str, **overrides: dict[str, Any]) -> Callable[[Any], Any]:
    """Decorate a command with the options ``names`` (in that order), each with its ``overrides``."""
    def decorate(f: Any) -> Any:
        for name in reversed(names):
            f = OPTIONS[name](**overrides.get(name, {}))(f)
        return f
    return decorate

"""``run(config)``: a whole FDS search, the retrain with the learned schedule, logs and checkpoints.

The path of one run: load the task, pick the log directory, run the outer loop (each outer step
checkpointed, then logged), retrain from scratch with the learned schedule and with the
hand-picked baseline, write ``schedule.json``.  :func:`resume` continues a run from its
checkpoint with the configuration the checkpoint stores, whether called from Python or the CLI.

Example:
    >>> from hpo import RunConfig, run
    >>> result = run(RunConfig(outer_steps=1, inner_steps=(20,), samples=400, logdir=str(tmp)))  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, final

import torch

from hpo import checks
from hpo.app.checkpoint import Checkpoint, checkpoint_path, load_checkpoint, remove_stale_temporaries
from hpo.app.checkpoint_writer import CheckpointWriter
from hpo.app.config import RunConfig, known_fields, plain, problem_label, show
from hpo.app.guarded_logging import GuardedLogger
from hpo.app.lock import LogdirLock
from hpo.app.logdir import default_logdir, ensure_writable_dir
from hpo.app.plan import RunPlan, make_plan
from hpo.app.ranks import StartSignal, check_launch, check_processes, follow, follower_logdir, sharded
from hpo.backends.auto_backend import AutoBackend
from hpo.core.callbacks import CallbackList, Callbacks, OuterRecord
from hpo.core.problem import MetricLabel
from hpo.core.schedule import Schedule
from hpo.errors import ConfigError, Interrupted, WriteError
from hpo.optimizers.grouped import group_counts, group_names
from hpo.optimizers.loss_hypers import example_names, loss_names
from hpo.reporting.report import format_values
from hpo.reporting.schedule_file import schedule_entries
from hpo.reporting.schedule_plot import save_schedule_figure
from hpo.runtime.determinism import use_deterministic_kernels
from hpo.runtime.device import DTYPES, cpu_threads, torch_threads
from hpo.runtime.distributed import Communicator, join, launched_world_size, leave
from hpo.runtime.files import atomic_write
from hpo.search.fds import run_fds
from hpo.search.inner_runs import make_problem
from hpo.search.retrain import RETRAIN_SEED_OFFSET, RetrainResult, retrain
from hpo.tasks.base import Problem
from hpo.tasks.mnist1d import DEFAULT_SAMPLES

#: Settings that may differ from the checkpoint's on resume (the new value is used).
MAY_CHANGE_ON_RESUME = ("outer_steps", "device", "threads")


@final
@dataclass(frozen=True)
class RunResult:
    """What a run learned and how the learned schedule and the baseline did when retrained.

    On ranks other than 0 of a data-parallel run, which retrain nothing, ``learned`` is None.
    """

    config: RunConfig
    schedule: Schedule
    history: tuple[OuterRecord, ...]
    learned: RetrainResult | None
    baseline: RetrainResult | None
    search_seconds: float
    logdir: Path
    summary: tuple[str, ...] = field(default=())


def run(config: RunConfig, callbacks: Sequence[Callbacks] = (), checkpoint: Checkpoint | None = None) -> RunResult:
    """Search, retrain and write the outputs of ``config``; continue ``checkpoint`` when given.

    ``callbacks`` see every outer step, inner step and retrain step, and every message line
    (:meth:`Callbacks.on_message`); the run's own TensorBoard logger is added to them.  Nothing is
    written to disk before the configuration and the task's data have been checked.

    Launched by ``torchrun`` with ``N > 1`` processes, the run is data-parallel (docs/distributed.md):
    every rank searches on its shard of each minibatch, and only rank 0 writes, retrains and calls
    ``callbacks``; the other ranks return a result with ``learned=None``.
    """
    with torch_threads(cpu_threads(config.threads, config.resolved_device)):
        comm = join(config.resolved_device)
        try:
            return run_with_threads(config, CallbackList(*callbacks), checkpoint, comm)
        finally:
            leave(comm)


def run_with_threads(config: RunConfig, cb: CallbackList, checkpoint: Checkpoint | None,
                     comm: Communicator | None = None) -> RunResult:
    """:func:`run` with the thread count set: resolve the plan (data checked), then take the log directory."""
    if comm is not None:
        check_launch(config, comm)
    check_processes(checkpoint, comm.world_size if comm is not None else 1)
    if config.deterministic:
        use_deterministic_kernels()
    plan = make_plan(config, checkpoint, comm)
    if comm is not None:
        plan = replace(plan, fds=sharded(plan.fds, plan.task, comm))
    if comm is not None and comm.rank != 0:
        followed = follow(plan, checkpoint)
        return RunResult(config, followed.schedule, followed.history, None, None, 0.0, follower_logdir(config))
    signal = StartSignal(comm)
    try:
        logdir = Path(config.logdir) if config.logdir is not None else default_logdir("hpo")
        if checkpoint is None and checkpoint_path(logdir).exists():
            raise ConfigError("logdir", f"{logdir} already holds a run; resume it or choose another log directory")
        if checkpoint is None and (logdir / "schedule.json").exists():
            raise ConfigError("logdir", f"{logdir} holds a finished run (schedule.json); choose another log directory")
        ensure_writable_dir(logdir)
        with LogdirLock(logdir):
            return run_locked(plan, logdir, cb, checkpoint, signal)
    except ConfigError as e:
        signal.fail(e)
        raise


def run_locked(plan: RunPlan, logdir: Path, cb: CallbackList, checkpoint: Checkpoint | None,
               signal: StartSignal | None = None) -> RunResult:
    """The body of :func:`run`, holding the log directory ``logdir``.

    ``signal`` starts the other ranks' search in a data-parallel run.
    """
    config, task, rule, backend, fds = plan.config, plan.task, plan.rule, plan.backend, plan.fds
    if checkpoint is None and checkpoint_path(logdir).exists():  # checked again under the lock
        raise ConfigError("logdir", f"{logdir} already holds a run; resume it or choose another log directory")
    remove_stale_temporaries(logdir)  # under the lock: no other process is writing here
    history = checkpoint.history if checkpoint is not None else ()
    cb.on_message(f"task={task.name} backend={backend.name} optimizer={rule.name} device={fds.device} "
                  f"dtype={config.dtype} train={len(task.train_rows)} test={len(task.test_rows)} logdir={logdir}")
    for name, groups in group_names(rule).items():
        cb.on_message(f"{name} per group ({config.groups.get(name, 'layer')}): {len(groups)} groups {', '.join(groups)}")
    if checkpoint is not None:
        cb.on_message(f"resuming {logdir} after outer step {checkpoint.state.k}/{config.outer_steps}")
    if isinstance(backend, AutoBackend):
        choice = backend.choose(make_problem(task, rule, fds, plan.state.k), Schedule(dict(plan.state.values)))
        cb.on_message(f"backend auto: {choice.name}, {choice.reason}")
    if config.compile:
        cb.on_message("compiling the inner step with torch.compile: the first steps take minutes on a CPU")

    from hpo.reporting.tensorboard_log import TensorBoardLogger  # imports tensorboard: only when a run starts

    # A fresh run purges from step 0: leftovers of a run killed before its first checkpoint vanish.
    tb = GuardedLogger(None, cb.on_message)
    try:
        tb.inner = TensorBoardLogger(logdir, purge_step=0 if checkpoint is None else checkpoint.state.k,
                                     global_step=sum(r.steps_run for r in history))
    except OSError as e:
        cb.on_message(f"warning: TensorBoard logging could not start ({e.strerror or e}); the run goes on")
    processes = fds.comm.world_size if fds.comm is not None else 1
    if processes > 1:
        cb.on_message(f"data-parallel over {processes} processes: each takes {(fds.batch_size or task.batch_size) // processes} "
                      f"rows of every minibatch; rank 0 writes")
    stored = {**config.to_dict(), "logdir": str(logdir)}
    writer = CheckpointWriter(checkpoint_path(logdir), stored,
                              checkpoint.search_seconds if checkpoint is not None else 0.0, processes)
    logged = CallbackList(cb, tb)
    logged.on_run_start(tuple(fds.horizon(k) for k in range(config.outer_steps)))
    if signal is not None:
        signal.go()
    try:
        return search_and_retrain(plan, logdir, cb, tb, history, writer, logged)
    except KeyboardInterrupt:
        done = load_checkpoint(checkpoint_path(logdir)).state.k if checkpoint_path(logdir).exists() else 0
        raise Interrupted(logdir, done) from None


def search_and_retrain(plan: RunPlan, logdir: Path, cb: CallbackList, tb: GuardedLogger,
                       history: tuple[OuterRecord, ...], writer: CheckpointWriter, logged: CallbackList) -> RunResult:
    """The outer loop, the two retrains and the outputs (``schedule.json``, ``schedule.png``).

    The learned schedule retrains with ``rule`` (grouped when ``config.groups`` is set); the
    hand-picked constant baseline with the plain rule (a constant shared by every group is the
    same training).
    """
    config, task, rule, backend, fds = plan.config, plan.task, plan.rule, plan.backend, plan.fds
    result = run_fds(task, rule, backend, fds, logged, state=plan.state, history=history, after_step=writer)
    search_seconds = writer.seconds()
    leave(fds.comm)  # the search is over: the ranks part together, and rank 0 retrains alone
    for line in zero_hypergradient_warnings(result.history):
        cb.on_message(line)

    steps = config.resolved_retrain_steps
    seed = config.seed + RETRAIN_SEED_OFFSET
    final = retrain(task, rule, result.schedule, steps, seed, DTYPES[config.dtype], fds.device,
                    on_step=lambda t, loss: logged.on_retrain_step("learned", t, steps, loss), grad_clip=fds.grad_clip)
    lines = [(f"learned schedule   {metrics_text(final)}  "
              f"({steps} steps{', DIVERGED' if final.diverged else ''})")]
    results: dict[str, Any] = {"learned": result_json(final, task.label)}
    base = None
    hand = config.resolved_baseline
    if hand is not None:
        hand_rule, hand_schedule = config.resolved_rule, Schedule.constant(hand)
        if loss_names(rule):  # the loss takes its values: the neutral ones, shaped for their groups
            hand_rule, hand_schedule = rule, hand_schedule.broadcast_groups(group_counts(rule))
        base = retrain(task, hand_rule, hand_schedule, steps, seed, DTYPES[config.dtype], fds.device,
                       on_step=lambda t, loss: logged.on_retrain_step("hand-picked", t, steps, loss),
                       grad_clip=fds.grad_clip)
        desc = ", ".join(f"{k} {v:g}" for k, v in hand.items())
        lines.append(f"hand-picked ({desc})  {metrics_text(base)}  "
                     f"({steps} steps{', DIVERGED' if base.diverged else ''})")
        results["hand_picked"] = {"hyper": hand, **result_json(base, task.label)}
    out = {
        "optimizer": rule.name, "backend": backend.name, "task": task.name,
        "schedule": schedule_entries(result.schedule, example_names(rule), logdir),
        **grouped_entry(result.schedule, example_names(rule)),
        "retrain_steps": steps,
        "search_seconds": search_seconds, "results": results, "config": writer.config, "versions": versions(),
        "processes": fds.comm.world_size if fds.comm is not None else 1,
        "history": [r.to_json() for r in result.history],
    }
    text = json.dumps(out, indent=2) + "\n"
    try:
        atomic_write(logdir / "schedule.json", lambda f: f.write(text.encode()))
    except OSError as e:
        raise WriteError(f"cannot write {logdir / 'schedule.json'}: {e.strerror or e} (the search is in "
                         f"{checkpoint_path(logdir)}; resume to write it again)") from None
    picture = logdir / "schedule.png"
    try:
        save_schedule_figure(result.schedule, picture, f"learned schedule after outer step {result.state.k}"
                                                       f"/{config.outer_steps}")
    except (OSError, ValueError) as e:  # a picture is not worth losing the run over
        cb.on_message(f"warning: could not write {picture}: {e}")
    tb.add_text("summary", "\n\n".join(lines), result.state.k)
    tb.close()
    summary = (f"learned schedule: {format_values(result.schedule.to_dict(), groups=result.schedule.groups_dict())}",
               *lines,
               (f"search took {search_seconds:.1f}s; wrote {logdir / 'schedule.json'}, {picture.name} and TensorBoard "
                f"logs (tensorboard --logdir {logdir})"))
    for line in summary:
        cb.on_message(line)
    return RunResult(config.replace(logdir=str(logdir)), result.schedule, result.history, final, base, search_seconds,
                     logdir, summary)


def zero_hypergradient_warnings(history: Sequence[OuterRecord]) -> list[str]:
    """One warning per type whose hypergradient was exactly zero at every one of >= 2 outer steps.

    A zero hypergradient that never moves means no tangent reached the value: the rule cut it
    (``float()``, ``.item()`` or ``sign()`` of a hyperparameter), or the value never acts.
    """
    if len(history) < 2:
        return []
    names = history[0].hypergrad.keys()
    zero = [n for n in names if all(x == 0.0 for r in history for x in flat(r.hypergrad.get(n, [1.0])))]
    return [f"warning: the hypergradient of {n} was exactly zero at every outer step; likely causes: the rule cuts "
            f"its tangent (float(), .item() or sign() of a hyperparameter; hpo check-rule tells), a segment no step "
            f"reaches, or a learning rate that stayed 0 so nothing trained" for n in zero]


def flat(values: list) -> list[float]:
    """A type's record entry as one list: a list of floats, or a grouped type's list of lists joined."""
    return [x for row in values for x in row] if values and isinstance(values[0], list) else list(values)


def versions() -> dict[str, str]:
    """Versions of hpo, torch and Python that produced a result."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    try:
        hpo_version = version("hpo-long-horizon")
    except PackageNotFoundError:
        hpo_version = "unknown"
    return {"hpo": hpo_version, "torch": torch.__version__, "python": platform.python_version()}


def grouped_entry(schedule: Schedule, aside: tuple[str, ...] = ()) -> dict[str, Any]:
    """``{"groups": {type: [group names]}}`` for schedule.json when a type is grouped, else nothing
    (the types in ``aside``, saved as tensor files, are indexed by training example: no names)."""
    groups = {k: v for k, v in schedule.groups_dict().items() if k not in aside}
    return {"groups": groups} if groups else {}


def resume(logdir: str | Path, overrides: Mapping[str, Any] | None = None,
           callbacks: Sequence[Callbacks] = ()) -> RunResult:
    """Continue the run in ``logdir`` from its last completed outer step, with its stored configuration.

    ``overrides`` may change only :data:`MAY_CHANGE_ON_RESUME`; any other entry must equal the
    stored value (a differing one is a ``ConfigError``), and ``logdir`` must be the run's own.
    """
    logdir = Path(logdir)
    if not logdir.is_dir():
        raise ConfigError("resume", f"{logdir} is not a directory of an earlier run")
    if not checkpoint_path(logdir).exists():
        raise ConfigError("resume", f"no checkpoint in {logdir} (a run stopped before its first outer step "
                                    f"finished has none: start it again)")
    try:
        ckpt = load_checkpoint(checkpoint_path(logdir))
    except ValueError as e:
        raise ConfigError("resume", str(e)) from None
    check_processes(ckpt, launched_world_size())
    saved = dict(ckpt.config)
    unknown = sorted(set(saved) - set(RunConfig().to_dict()))
    if unknown:
        raise ConfigError("resume", f"the checkpoint has settings this version of hpo does not know: "
                                    f"{', '.join(unknown)}")
    for key in ("optimizer", "task", "backend"):  # a checkpoint never makes hpo import code
        stored = saved.get(key)
        if isinstance(stored, str) and ":" in stored and (overrides or {}).get(key) != stored:
            raise ConfigError(key, f"the run being resumed used {stored!r}, code from outside hpo; name it again "
                                   f"to allow importing it (resuming never imports what a checkpoint names)")
    overrides = known_fields(RunConfig, overrides or {})
    if "outer_steps" in overrides and checks.is_int(overrides["outer_steps"]) and overrides["outer_steps"] < ckpt.state.k:
        raise ConfigError("outer_steps", f"the run being resumed has done {ckpt.state.k} outer steps; ask for at "
                                         f"least that many, got {overrides['outer_steps']}")
    stored_task = saved.get("task")
    if isinstance(stored_task, str) and stored_task.startswith("<problem "):
        given = (overrides or {}).get("task")
        if not (isinstance(given, Problem) and problem_label(given) == stored_task):
            raise ConfigError("resume", f"the run being resumed tuned a Problem object ({stored_task}), which a "
                                        f"checkpoint cannot hold; resume it from Python: hpo.resume(logdir, "
                                        f"{{'task': problem}})")
        saved = {**saved, "task": given}
    merged = {**saved, "logdir": str(logdir)}
    for name, value in overrides.items():
        if name == "logdir":
            if value is not None and Path(value).resolve() != logdir.resolve():
                raise ConfigError("logdir", f"{value} is not the directory of the run being resumed ({logdir}); "
                                            f"a run resumes in its own directory")
        elif name in MAY_CHANGE_ON_RESUME:
            merged[name] = value
        elif plain(value) != plain(effective(saved, name)) and not same_resolved(saved, name, value):
            raise ConfigError(name, f"{show(value)} conflicts with the run being resumed (it has "
                                    f"{show(saved.get(name))}); only {', '.join(MAY_CHANGE_ON_RESUME)} may change")
    if merged.get("schedule_init") is not None:
        # The starting schedule is in the checkpoint's outer state already: resuming must not need the
        # file again (it may have moved).  Its counts become explicit.
        merged = {**merged, "schedule_init": None, "init": {},
                  "counts": {n: int(v.shape[-1]) for n, v in ckpt.state.values.items()}}
    config = RunConfig.from_dict(merged)
    try:
        Schedule(dict(ckpt.state.values)).check(config.resolved_rule)
    except ValueError as e:
        raise ConfigError("resume", f"the checkpoint does not fit optimizer {config.resolved_rule.name!r}: {e}") from None
    return run(config, callbacks, checkpoint=ckpt)


def same_resolved(saved: Mapping[str, Any], name: str, value: Any) -> bool:
    """Whether ``counts``, ``init`` or ``steps`` given as ``value`` resolve as the stored ones do.

    ``--counts lr=7`` and a stored ``{}`` mean the same for a rule whose default count is 7.
    """
    if name not in ("counts", "init", "steps"):
        return False
    try:
        a = RunConfig.from_dict({**saved, "logdir": None}).fds()
        b = RunConfig.from_dict({**saved, name: value, "logdir": None}).fds()
    except ConfigError:
        return False
    rule = RunConfig.from_dict({**saved, "logdir": None}).resolved_rule
    resolve = {"counts": "resolved_counts", "steps": "resolved_steps"}.get(name)
    if resolve is None:
        return {s.name: a.init.get(s.name, s.init) for s in rule.hyperparameters} == {
            s.name: b.init.get(s.name, s.init) for s in rule.hyperparameters}
    return getattr(a, resolve)(rule) == getattr(b, resolve)(rule)


def effective(saved: Mapping[str, Any], name: str) -> Any:
    """The value a stored setting stands for (a stored None ``samples`` is MNIST-1D's default count)."""
    value = saved.get(name, getattr(RunConfig(), name))
    if name == "samples" and value is None and str(saved.get("task", "")).startswith("mnist1d"):
        return DEFAULT_SAMPLES
    return value


def result_json(result: RetrainResult, label: MetricLabel) -> dict[str, Any]:
    """A retrain's entry in ``schedule.json``: the test score shown as ``test_<metric>`` in the metric's
    own units (``test_acc`` of a classifier, as always; no second entry when the metric is the loss)."""
    d = {k: v for k, v in result.__dict__.items() if k != "test_acc"}
    return d if label.is_loss else {f"test_{label.name}": label.value(result.test_acc), **d}


def metrics_text(result: RetrainResult) -> str:
    """``test_<metric>=v ... test_loss=v``: every reported test metric of a retrain, then the objective."""
    shown = {k: v for k, v in result.metrics.items() if k != "loss"}
    return "  ".join([*(f"test_{k}={v:.4f}" for k, v in shown.items()), f"test_loss={result.test_loss:.4f}"])

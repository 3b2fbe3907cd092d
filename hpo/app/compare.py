"""``hpo compare``: hypergradient backends and search baselines at an equal budget of inner steps.

Every method searches on the task's training set minus a fixed hold-out set, spending at most
``B`` inner training steps (one FDS outer step or one search trial costs one horizon ``T``):

* a backend name (``forward-manual``, ``greedy``, ``reverse-truncated``, ...): the FDS sign-based
  outer loop with that backend, ``B // T`` outer steps;
* ``online-greedy``: ``B // T`` runs of online hypergradient descent, each starting from the values
  the last run ended with (its incumbent: the last run's per-segment means);
* ``random-constant`` / ``random-schedule`` / ``tpe`` / ``tpe-schedule``: ``B // T`` trials;
* ``cosine-random`` / ``cosine-tpe``: ``B // T`` trials of a cosine schedule with warm-up;
* ``schedule-free``: ``B // T`` trials of schedule-free SGD (retrained with it, not with the rule);
* ``pbt``: Ray Tune's PBT with ``B // T`` members, its best member's trajectory replayed;
* ``hand-picked``: the rule's constant hand-picked setting (no search, 0 steps).

At each budget point the incumbent schedule is retrained from scratch (by the method's
:meth:`~hpo.search.base.SearchMethod.retrain`) on the whole training set
for ``retrain_steps`` and tested; at the final budget it is also retrained on the training set
minus the hold-out and scored on the hold-out ("val acc").  Wall-clock time of each search is
reported next to its steps: a forward-mode step costs several plain steps.

A comparison holds its log directory (:class:`~hpo.app.lock.LogdirLock`), refuses one that already
holds comparison results, and checkpoints its rows after every (seed, method) pair;
:func:`resume_compare` skips the finished pairs and ends with the same rows as an uninterrupted
comparison (same device; CPU runs are deterministic).
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from hpo.app.checkpoint import remove_stale_temporaries
from hpo.app.compare_checkpoint import (
    CompareCheckpoint,
    Row,
    compare_checkpoint_path,
    load_compare_checkpoint,
    save_compare_checkpoint,
)
from hpo.app.compare_config import CompareConfig
from hpo.app.compare_outputs import csv_text, summary_table, write_csv, write_outputs
from hpo.app.config import show
from hpo.app.lock import LogdirLock
from hpo.app.logdir import default_logdir, ensure_writable_dir
from hpo.app.task_loading import load_task
from hpo.errors import CompareInterrupted, ConfigError, WriteError
from hpo.optimizers.grouped import group_counts
from hpo.optimizers.loss_hypers import example_names, loss_names
from hpo.runtime.device import cpu_threads, torch_threads
from hpo.runtime.distributed import launched_world_size
from hpo.search.base import Incumbent, SearchSettings
from hpo.search.inner_runs import rule_with_groups
from hpo.search.retrain import RETRAIN_SEED_OFFSET
from hpo.tasks.base import Task

__all__ = ["Row", "compare", "csv_text", "incumbent", "resume_compare", "run_compare", "split_holdout",
           "summary_table", "write_csv", "write_outputs"]


Log = Callable[[str], None]


#: Called after every finished (seed, method) pair with the finished pairs and all rows so far.
AfterPair = Callable[[tuple[tuple[int, str], ...], tuple[Row, ...]], None]


#: Files that mark a directory as holding a comparison.
RESULT_NAMES = ("results.csv", "results.md")


#: Settings that may differ from the stored ones on resume (the new value is used).
MAY_CHANGE_ON_RESUME = ("device", "jobs")


def split_holdout(task: Task, frac: float) -> tuple[Task, Task]:
    """``(search_task, holdout_task)``: the train set minus a fixed hold-out, and the hold-out as its test set.

    A problem with its own validation set searches on all of its train set (its per-example weights
    then index the examples a retrain trains on) and is scored on that validation set.
    """
    if task.val_rows is not None:
        return task, replace(task, test=task.val_rows)
    n = len(task.train_rows)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(12_345))
    n_hold = max(1, math.ceil(frac * n))
    hold, rest = perm[:n_hold], perm[n_hold:]
    search = replace(task, train=task.train_rows.subset(rest))
    holdout = replace(task, train=task.train_rows.subset(rest), test=task.train_rows.subset(hold))
    return search, holdout


def incumbent(points: list[Incumbent], budget: int) -> Incumbent | None:
    """The last checkpoint within ``budget`` steps (None if none fits)."""
    fit = [p for p in points if p.steps <= budget]
    return fit[-1] if fit else None


def run_pair(cfg: CompareConfig, task: Task, seed: int, name: str) -> tuple[list[Row], list[str]]:
    """Search with method ``name`` and ``seed``, retrain each budget point's incumbent; its rows and log lines."""
    rule, settings, steps = cfg.resolved_rule, cfg.settings(), cfg.resolved_retrain_steps
    dtype, device = settings.dtype, settings.device
    search_task, holdout_task = split_holdout(task, cfg.holdout_frac)
    method = cfg.resolved_methods[name]
    points = method.search(search_task, rule, settings, seed)
    if loss_names(rule):  # retrain with the loss's values sized by the task; a shared value goes to every group
        rule = rule_with_groups(task, rule, settings.fds(0))
        points = [replace(p, schedule=p.schedule.broadcast_groups(group_counts(rule))) for p in points]
    last = points[-1] if points else None
    lines = [(f"seed {seed}  {name:<18} search: {last.steps if last else 0} inner steps, "
              f"{last.seconds if last else 0.0:.1f}s wall, {last.cpu_seconds if last else 0.0:.1f}s CPU")]
    pair: list[Row] = []
    for budget in sorted(cfg.budget):
        point = incumbent(points, budget)
        if point is None:
            continue
        r = method.retrain(task, rule, point.schedule, steps, seed + RETRAIN_SEED_OFFSET, dtype, device,
                           grad_clip=settings.grad_clip)
        val = None
        if budget == cfg.max_budget:
            val = method.retrain(holdout_task, rule, point.schedule, steps, seed + RETRAIN_SEED_OFFSET,
                                 dtype, device, grad_clip=settings.grad_clip).test_acc
        searched = point.search_val_acc if math.isfinite(point.search_val_acc) else None
        pair.append(Row(name, seed, budget, point.steps, point.seconds, point.cpu_seconds, r.test_acc, val,
                        steps, r.diverged, point.schedule.to_dict(), searched))
    if pair:
        label = task.label
        val_text = "-" if pair[-1].val_acc is None else f"{label.value(pair[-1].val_acc):.4f}"
        lines.append(f"seed {seed}  {name:<18} test_{label.name}={label.value(pair[-1].test_acc):.4f}  "
                     f"val_{label.name}={val_text}")
    return pair, lines


def pair_job(config: dict[str, Any], seed: int, name: str, threads: int) -> tuple[list[Row], list[str]]:
    """:func:`run_pair` in a worker process: rebuild the configuration and the task, with ``threads`` threads."""
    torch.set_num_threads(threads)
    cfg = CompareConfig.from_dict(config)
    settings = cfg.settings()
    return run_pair(cfg, load_task(cfg.task, cfg.task_options(), settings.dtype, settings.device, cfg.loss_hypers),
                    seed, name)


def run_compare(cfg: CompareConfig, task: Task, log: Log = print, done: CompareCheckpoint | None = None,
                after_pair: AfterPair | None = None) -> list[Row]:
    """Search with every method and seed, retrain every incumbent; one :class:`Row` each.

    Pairs that ``done`` lists as finished are not run again: their stored rows take their place.
    ``after_pair`` sees the finished pairs and the rows after each pair (the checkpoint).  With
    ``cfg.jobs > 1`` the pairs run in that many worker processes (spawned, ``cores // jobs``
    threads each); the rows come out in the same order as with one job.
    """
    order = [(seed, name) for seed in cfg.seeds for name in cfg.methods]
    by_pair: dict[tuple[int, str], list[Row]] = {}
    finished: list[tuple[int, str]] = []

    def finish(key: tuple[int, str], rows: list[Row], lines: list[str]) -> None:
        by_pair[key] = rows
        finished.append(key)
        for line in lines:
            log(line)
        if after_pair is not None:
            after_pair(tuple(finished), tuple(r for k in finished for r in by_pair[k]))

    todo = []
    for key in order:
        if done is not None and key in done.done:
            finish(key, done.rows_of(*key), [f"seed {key[0]}  {key[1]:<18} finished before (rows from the checkpoint)"])
        else:
            todo.append(key)
    if cfg.jobs == 1:
        for seed, name in todo:
            finish((seed, name), *run_pair(cfg, task, seed, name))
    else:
        threads = max(1, (os.cpu_count() or 1) // cfg.jobs)
        with ProcessPoolExecutor(max_workers=cfg.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(pair_job, cfg.to_dict(), seed, name, threads): (seed, name) for seed, name in todo}
            for future in as_completed(futures):
                finish(futures[future], *future.result())
    return [r for key in order for r in by_pair[key]]


def compare(cfg: CompareConfig, log: Log = print, checkpoint: CompareCheckpoint | None = None
            ) -> tuple[list[Row], dict[str, Path]]:
    """The whole ``hpo compare``: load the task, run every method and seed, write tables and plots.

    A directory that already holds a comparison is refused (``ConfigError`` on ``logdir``) unless
    ``checkpoint`` continues it (see :func:`resume_compare`).  The directory is locked while the
    comparison runs, and a checkpoint is written after every (seed, method) pair.
    """
    if launched_world_size() > 1:  # each rank would run the whole comparison into the same directory
        raise ConfigError("jobs", "hpo compare runs in one process and spreads its pairs with jobs; launch it "
                                  "without torchrun")
    settings = cfg.settings()
    with torch_threads(cpu_threads(None, settings.device)):
        return compare_with_threads(cfg, settings, log, checkpoint)


def compare_with_threads(cfg: CompareConfig, settings: SearchSettings, log: Log,
                         checkpoint: CompareCheckpoint | None) -> tuple[list[Row], dict[str, Path]]:
    """:func:`compare` with the thread count set (one per process, as ``hpo run``)."""
    task = load_task(cfg.task, cfg.task_options(), settings.dtype, settings.device, cfg.loss_hypers)
    if example_names(cfg.resolved_rule) and task.val_rows is None:
        raise ConfigError("loss_hypers", "per-example weights in hpo compare need the problem's own validation set "
                                         "(--label-noise on MNIST-1D, or Problem(val=...)): a hold-out split would "
                                         "change the examples they weigh")
    for name, method in cfg.resolved_methods.items():
        try:
            method.check_task(task)
        except ValueError as e:
            raise ConfigError("methods", f"{name}: {e}") from None
    logdir = Path(cfg.logdir) if cfg.logdir is not None else default_logdir("compare")
    if checkpoint is None:
        refuse_existing(logdir)
    ensure_writable_dir(logdir)
    with LogdirLock(logdir):
        if checkpoint is None:
            refuse_existing(logdir)  # checked again under the lock
        else:
            remove_stale_temporaries(logdir)
        cfg = cfg.replace(logdir=str(logdir))
        header = (f"task={task.name} optimizer={cfg.resolved_rule.name} budget={','.join(map(str, cfg.budget))} "
                  f"inner steps (T={cfg.inner_steps}) retrain={cfg.resolved_retrain_steps} "
                  f"seeds={','.join(map(str, cfg.seeds))} device={settings.device} dtype={cfg.dtype}")
        log(header)
        if checkpoint is not None:
            log(f"resuming {logdir}: {len(checkpoint.done)} of {len(cfg.seeds) * len(cfg.methods)} "
                f"(seed, method) pairs finished")
        path = compare_checkpoint_path(logdir)
        stored = cfg.to_dict()

        def save(done: tuple[tuple[int, str], ...], rows: tuple[Row, ...]) -> None:
            try:
                save_compare_checkpoint(path, CompareCheckpoint(stored, done, rows))
            except OSError as e:
                raise WriteError(f"cannot write checkpoint {path}: {e.strerror or e}") from None

        try:
            rows = run_compare(cfg, task, log, checkpoint, save)
            return rows, write_outputs(rows, cfg, logdir, header, log, task.label)
        except KeyboardInterrupt:
            raise CompareInterrupted(logdir, finished_pairs(path)) from None


def refuse_existing(logdir: Path) -> None:
    """``ConfigError`` on ``logdir`` if it already holds a comparison (its checkpoint or its results)."""
    if compare_checkpoint_path(logdir).exists():
        raise ConfigError("logdir", f"{logdir} already holds a comparison; resume it or choose another log directory")
    for name in RESULT_NAMES:
        if (logdir / name).exists():
            raise ConfigError("logdir", f"{logdir} already holds comparison results ({name}); choose another log "
                                        f"directory")


def finished_pairs(path: Path) -> int:
    """How many (seed, method) pairs the checkpoint at ``path`` holds (0 if none can be read)."""
    try:
        return len(load_compare_checkpoint(path).done) if path.exists() else 0
    except ValueError:
        return 0


def resume_compare(logdir: str | Path, overrides: Mapping[str, Any] | None = None,
                   log: Log = print) -> tuple[list[Row], dict[str, Path]]:
    """Continue the comparison in ``logdir``: skip its finished (seed, method) pairs, run the rest, write outputs.

    The configuration is the stored one.  ``overrides`` may change only :data:`MAY_CHANGE_ON_RESUME`;
    any other entry must equal the stored value (a differing one is a ``ConfigError`` naming it).
    A task, optimizer or method given as ``module:attr`` is imported only if named again.
    """
    logdir, overrides = Path(logdir), dict(overrides or {})
    if not logdir.is_dir():
        raise ConfigError("resume", f"{logdir} is not a directory of an earlier comparison")
    path = compare_checkpoint_path(logdir)
    if not path.exists():
        raise ConfigError("resume", f"no compare checkpoint in {logdir} (a comparison stopped before its first "
                                    f"(seed, method) pair finished has none: start it again)")
    try:
        ckpt = load_compare_checkpoint(path)
    except ValueError as e:
        raise ConfigError("resume", str(e)) from None
    saved = dict(ckpt.config)
    refuse_foreign_code(saved, overrides)
    given = {k: v for k, v in overrides.items() if k != "logdir"}
    if overrides.get("logdir") is not None and Path(overrides["logdir"]).resolve() != logdir.resolve():
        raise ConfigError("logdir", f"{overrides['logdir']} is not the directory of the comparison being resumed "
                                    f"({logdir}); a comparison resumes in its own directory")
    stored_cfg = CompareConfig.from_dict({**saved, "logdir": str(logdir)})
    config = stored_cfg.replace(**given) if given else stored_cfg
    before, after = stored_cfg.to_dict(), config.to_dict()
    for name in given:
        if name not in MAY_CHANGE_ON_RESUME and after[name] != before[name]:
            raise ConfigError(name, f"{show(after[name])} conflicts with the comparison being resumed (it has "
                                    f"{show(before[name])}); only {', '.join(MAY_CHANGE_ON_RESUME)} may change")
    pairs = {(s, m) for s in config.seeds for m in config.methods}
    if not set(ckpt.done) <= pairs:
        raise ConfigError("resume", f"{path} lists finished pairs its configuration does not have")
    return compare(config, log, checkpoint=ckpt)


def refuse_foreign_code(saved: Mapping[str, Any], overrides: Mapping[str, Any]) -> None:
    """A stored ``module:attr`` task, optimizer or method must be named again: a checkpoint never makes hpo import code."""
    for key in ("task", "optimizer", "methods"):
        stored = saved.get(key)
        names = stored if isinstance(stored, list) else [stored]
        given = overrides.get(key)
        given_names = list(given) if isinstance(given, (list, tuple)) else [given]
        for name in names:
            if isinstance(name, str) and ":" in name and name not in given_names:
                raise ConfigError(key, f"the comparison being resumed used {name!r}, code from outside hpo; name it "
                                       f"again to allow importing it (resuming never imports what a checkpoint names)")

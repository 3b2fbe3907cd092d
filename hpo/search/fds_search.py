"""FDS with a hypergradient backend: ``budget // T`` sign-based outer steps, the incumbent after each."""

from __future__ import annotations

from typing import final

from hpo.backend import HypergradientBackend
from hpo.callbacks import Callbacks, OuterRecord
from hpo.fds import run_fds
from hpo.optimizers.base import UpdateRule
from hpo.schedule import Schedule
from hpo.search.base import Incumbent, SearchMethod, SearchSettings, Stopwatch
from hpo.tasks.base import Task


@final
class _Recorder(Callbacks):
    """Stamps the schedule after every outer step."""

    def __init__(self, seconds: float | None = None) -> None:
        self.watch = Stopwatch()
        self.seconds = seconds
        self.steps = 0
        self.points: list[Incumbent] = []

    def on_outer_step(self, record: OuterRecord) -> None:
        """Record the values after the step; past the time budget, stop the search."""
        self.steps += record.steps_run
        self.points.append(self.watch.stamp(self.steps, Schedule.from_dict(record.values), record.val_acc))
        if self.watch.out_of_time(self.seconds):
            raise TimeUp


@final
class TimeUp(Exception):
    """Raised by the recorder to end an FDS search at its time budget (caught by :class:`FDSSearch`)."""


@final
class FDSSearch(SearchMethod):
    """The FDS outer loop driven by ``backend`` (a method named after the backend)."""

    name = "fds"

    def __init__(self, backend: HypergradientBackend) -> None:
        self.backend = backend

    def check(self, rule: UpdateRule, settings: SearchSettings) -> None:
        """The backend must support the rule."""
        self.backend.check_rule(rule)

    def search(self, task: Task, rule: UpdateRule, settings: SearchSettings, seed: int) -> list[Incumbent]:
        """Run ``budget // T`` outer steps."""
        rec = _Recorder(settings.seconds)
        try:
            run_fds(task, rule, self.backend, settings.fds(seed), rec)
        except TimeUp:
            pass
        return rec.points

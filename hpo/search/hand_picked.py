"""The rule's hand-picked constant setting: no search, zero steps."""

from __future__ import annotations

import math
from typing import final

from hpo.core.schedule import Schedule
from hpo.optimizers.base import UpdateRule
from hpo.search.base import Incumbent, SearchMethod, SearchSettings
from hpo.tasks.base import Task


@final
class HandPicked(SearchMethod):
    """``hand-picked``: ``rule.hand_picked`` as a constant schedule."""

    name = "hand-picked"

    def check(self, rule: UpdateRule, settings: SearchSettings) -> None:
        """The rule must have a hand-picked setting."""
        if rule.hand_picked is None:
            raise ValueError(f"optimizer {rule.name!r} has no hand-picked setting")

    def search(self, task: Task, rule: UpdateRule, settings: SearchSettings, seed: int) -> list[Incumbent]:
        """One incumbent at 0 steps."""
        self.check(rule, settings)
        return [Incumbent(0, 0.0, Schedule.constant(rule.hand_picked or {}), math.nan)]

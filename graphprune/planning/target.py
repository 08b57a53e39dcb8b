"""Plan to a measured latency: the prediction (`planning.latency`) is a model, the
target a measurement. `plan_to_latency` plans to the target, prunes, times the result
alternately with the original on the table's provider, threads and timing mode (the
original's session built and warmed once for every round), and re-plans with the goal
corrected by target/measured until the measured fraction is within the tolerance.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..core.analysis import Analysis
from ..errors import GraphpruneError
from ..posttrain.statistics import CalibrationStats
from ..runtime.latency import bench, runner
from ..runtime.profile import LatencyTable, ProfileOptions, fingerprint, machine_id, profile
from .plan import Plan, PlanOptions, make_plan

logger = logging.getLogger(__name__)


@dataclass
class LatencyResult:
    """The plan and model closest to the target, and every attempt on the way."""

    plan: Plan
    model: onnx.ModelProto
    summary: dict


def plan_to_latency(
    analysis: Analysis,
    options: PlanOptions,
    build: Callable[[Plan], onnx.ModelProto],
    feeds: dict[str, np.ndarray],
    *,
    table: LatencyTable,
    target: float,
    tolerance: float = 0.05,
    iterations: int = 5,
    repeats: int = 30,
    stats: CalibrationStats | None = None,
) -> LatencyResult:
    """Plan to keep `target` of the measured latency, build it (`build(plan)`), measure it
    against the original alternately on the table's provider and threads, and re-plan
    with the goal corrected by measured/target until within `tolerance`."""
    original = runner(analysis.view.model, feeds, table.provider, table.threads, table.timing)
    original()  # its one warm-up
    copies = original.copies()
    goal, attempts, best = target, [], None
    below, above = None, None  # (goal, measured) that measured under and over the target
    for _ in range(iterations):
        budget = dataclasses.replace(options.budget, keep=min(goal, 1.0), table=table)
        chosen = make_plan(analysis, dataclasses.replace(options, budget=budget), stats=stats)
        pruned = build(chosen)
        timing = bench(original, pruned, feeds, repeats, table.provider, table.threads,
                       timing=table.timing, copies=copies)  # fmt: skip
        measured = timing["paired_fraction"]
        attempt = {
            "goal": round(goal, 6),
            "predicted_ms": round(chosen.budget["predicted_ms"], 5),
            "predicted_fraction": chosen.budget["estimated_keep"],
            "measured_ms": timing["latency_ms_after"],
            "original_ms": timing["latency_ms_before"],
            "measured_fraction": round(measured, 6),
            "repeats": timing["repeats"],
        }
        attempts.append(attempt)
        logger.info("latency attempt %s", attempt)
        error = abs(measured / target - 1)
        if best is None or error < best[0]:
            best = (error, chosen, pruned, attempt, timing)
        if error <= tolerance:
            break
        if measured < target:
            below = max(below or (goal, measured), (goal, measured))
        else:
            above = min(above or (goal, measured), (goal, measured))
        goal = _next_goal(goal, measured, target, below, above)
        if goal == attempts[-1]["goal"]:
            break  # the whole model is already faster than needed: nothing left to undo
    error, chosen, pruned, attempt, timing = best
    summary = {
        "target_fraction": target,
        "target_ms": round(target * table.measured_ms, 5),
        "tolerance": tolerance,
        "provider": table.provider,
        "threads": table.threads,
        "timing": table.timing,
        "copies_ms": timing["copies_ms_before"],
        "copies_ms_pruned": timing["copies_ms_after"],
        "profiled_ms": table.measured_ms,
        "predicted_ms": attempt["predicted_ms"],
        "measured_ms": attempt["measured_ms"],
        "original_ms": attempt["original_ms"],
        "measured_fraction": attempt["measured_fraction"],
        "within_tolerance": error <= tolerance,
        "attempts": attempts,
    }
    return LatencyResult(chosen, pruned, summary)


def _next_goal(goal, measured, target, below, above) -> float:
    """The predicted fraction to plan next: the goal scaled by target/measured until the
    target is bracketed, then the secant between the closest goals on either side (the
    measured latency is a step function of the goal: scaling alone oscillates)."""
    if below is None or above is None:
        return min(goal * target / measured, 1.0)
    (goal_low, low), (goal_high, high) = below, above
    if high == low:
        return (goal_low + goal_high) / 2
    step = (target - low) / (high - low)
    return goal_low + min(max(step, 0.1), 0.9) * (goal_high - goal_low)


@dataclass(frozen=True)
class LatencyTarget:
    """Keep `fraction` of the original's measured latency, or reach `ms` milliseconds;
    `table` (checked against this run) or a profile measured with `profile` predicts."""

    fraction: float | None = None
    ms: float | None = None
    table: LatencyTable | None = field(default=None, compare=False, repr=False)
    table_source: str | None = None
    profile: ProfileOptions = field(default_factory=ProfileOptions)
    tolerance: float = 0.05
    iterations: int = 5
    repeats: int = 30

    def __post_init__(self) -> None:
        if (self.fraction is None) == (self.ms is None):
            raise GraphpruneError("give --target-latency F or --target-ms MS, one of them")
        if self.fraction is not None and not 0.0 < self.fraction <= 1.0:
            raise GraphpruneError(f"--target-latency must be in (0, 1], got {self.fraction}")
        if self.ms is not None and not 0.0 < self.ms < float("inf"):
            raise GraphpruneError(f"--target-ms must be a positive number, got {self.ms}")
        if not 0.0 < self.tolerance < 1.0 or self.iterations < 1 or self.repeats < 1:
            raise GraphpruneError("latency tolerance in (0, 1), iterations and repeats >= 1")

    def resolve_table(self, analysis: Analysis, shapes, feeds) -> LatencyTable:
        """The given table, refused unless measured for this model, machine, provider,
        threads and shapes; or a new profile (written nowhere)."""
        if self.table is None:
            return profile(analysis, shapes, feeds, self.profile)
        self.table.check_matches(
            self.table_source or "<given>", machine=machine_id(),
            provider=self.profile.provider, threads=self.profile.resolved_threads,
            shapes=shapes, model=fingerprint(analysis.view.model), timing=self.profile.timing,
        )  # fmt: skip
        return self.table

    def fraction_of(self, table: LatencyTable) -> float:
        if self.fraction is not None:
            return self.fraction
        fraction = self.ms / table.measured_ms
        if fraction > 1.0:
            raise GraphpruneError(
                f"--target-ms {self.ms:g} is above the model's {table.measured_ms:g} ms"
            )
        return fraction

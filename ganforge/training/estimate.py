"""How long a run takes: its periods (each PGGAN resolution, fade and stable; one period for a fixed
schedule) at their speed, the start-up, and the periodic work (ticks, sample grids, snapshots).
`ganforge train --plan` fills it with a few timed steps of every period before a run (bench.py);
a run logs it at the first tick of each period from its own speed so far (`RunTimer`). Metrics
during training are not counted: `ganforge evaluate` states its own estimate."""

from __future__ import annotations

import contextlib
import datetime
import io
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ganforge.metrics.diversity import relative_diversity
from ganforge.training.options import PlannedPeriod, TrainOptions, run_periods
from ganforge.training.runlog import save_grid


@dataclass
class PeriodicCosts:
    """Seconds of one of each piece of periodic work; None where not timed yet."""

    tick: float | None = None       # a stats row: the tick's means and the samples' diversity
    grid: float | None = None       # a sample grid made and encoded as PNG (its stats.png chart not counted)
    snapshot: float | None = None   # one snapshot file serialised (a run's writes to disk measured as they happen)


def due_count(start: int, end: int, every_kimg: float, steps: int) -> int:
    """How often something every `every_kimg` comes due from image `start` to `end` in `steps` steps: once
    per multiple crossed (at most once a step), and once at the end unless that was a multiple."""
    every = max(1, round(every_kimg * 1000))
    return min(end // every - start // every, steps) + (1 if end % every else 0)


def periodic_counts(opts: TrainOptions, periods: list[PlannedPeriod], new_run: bool,
                    start: int | None = None) -> dict[str, int]:
    """Ticks, grids and snapshot files the run writes over `periods` (from image `start`, by default
    the first period's), and its metric evaluations."""
    if not periods:
        return {"ticks": 0, "grids": 0, "snapshots": 0, "metrics": 0}
    start = periods[0].start if start is None else start
    end = periods[-1].start + periods[-1].images
    steps = sum(p.steps for p in periods)
    progressive = bool(periods[0].schedule.period)  # a grid kept at the end of every period
    return {"ticks": due_count(start, end, opts.tick, steps),
            "grids": due_count(start, end, opts.sample_every, steps) + new_run + (len(periods) if progressive else 0),
            "snapshots": 2 * due_count(start, end, opts.snap, steps),  # latest.pt and the kept one
            "metrics": due_count(start, end, opts.metrics_every, steps) if opts.metrics else 0}


def periodic_seconds(counts: dict[str, int], costs: PeriodicCosts) -> float:
    """The periodic work's seconds, counting what is not timed yet as nothing."""
    return sum(counts[kind] * (getattr(costs, kind[:-1]) or 0.0) for kind in ("ticks", "grids", "snapshots"))


def time_periodic_work(model, grid, grid_reals: torch.Tensor, state, opts: TrainOptions) -> PeriodicCosts:
    """One tick's diversity, one grid (with the model's own pictures) and one snapshot, timed in memory."""
    start = time.perf_counter()
    relative_diversity(grid.images(model), grid_reals)
    tick = time.perf_counter() - start
    start = time.perf_counter()
    save_grid(grid.images(model), io.BytesIO(), grid.columns)
    with torch.no_grad():
        for images in model.visuals(grid_reals[:32]).values():
            save_grid(images, io.BytesIO(), 8)
    grid_seconds = time.perf_counter() - start
    return PeriodicCosts(tick=tick, grid=grid_seconds, snapshot=time_snapshot(state, model, opts))


def time_snapshot(state, model, opts: TrainOptions) -> float:
    """Seconds to gather and serialise one snapshot of the run (in memory: nothing is written)."""
    start = time.perf_counter()
    torch.save(state.snapshot(model, opts), io.BytesIO())
    return time.perf_counter() - start


def clock(seconds: float) -> str:
    """H:MM:SS."""
    return str(datetime.timedelta(seconds=round(seconds)))


def gib(nbytes: int | None) -> str:
    return "unknown" if nbytes is None else f"{nbytes / 2**30:.2f} GiB"


def ends_at(seconds_from_now: float) -> str:
    return (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds_from_now)).strftime(
        "%H:%M UTC")


@dataclass
class TimedPeriod:
    period: PlannedPeriod
    seconds_per_step: float
    peak_memory: int | None


def plan_lines(opts: TrainOptions, device: torch.device, timed: list[TimedPeriod], startup: float,
               costs: PeriodicCosts, timed_over: str, warmup: int) -> tuple[list[str], float]:
    """The table `train --plan` prints, and the whole run's seconds."""
    memory_kind = "max allocated" if device.type == "cuda" else "peak RSS"
    rows = [("phase", "images", "img/s", f"memory ({memory_kind})", "time")]
    training = 0.0
    for t in timed:
        seconds = t.period.steps * t.seconds_per_step
        training += seconds
        rows.append((t.period.name, f"{t.period.images:,}", f"{t.period.schedule.batch / t.seconds_per_step:,.1f}",
                     gib(t.peak_memory), clock(seconds)))
    counts = periodic_counts(opts, [t.period for t in timed], new_run=True)
    periodic = periodic_seconds(counts, costs)
    total = startup + training + periodic
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [f"plan: {opts.model} {opts.resolution}x{opts.resolution}, --kimg {opts.kimg:g}, on {device}: each phase "
             f"timed over {timed_over} after {warmup} warm-up steps, the data, EMA and augmentation included"]
    lines += ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
              for r in rows]
    lines.append(f"start-up (data, model): {clock(startup)}")
    lines.append(f"periodic work, estimated: {clock(periodic)} ({counts['ticks']} ticks, {counts['grids']} grids, "
                 f"{counts['snapshots']} snapshot files; their writes to disk and stats.png charts not timed)")
    if counts["metrics"]:
        lines.append(f"not included: {counts['metrics']} evaluation(s) of --metrics {','.join(opts.metrics)} with "
                     f"--metrics-n {opts.metrics_n} (ganforge evaluate states how long one takes)")
    lines.append(f"whole run: about {clock(total)} (would end about {ends_at(total)})")
    return lines, total


@dataclass
class RunTimer:
    """A run's own measure of its speed, for the estimate logged at the first tick of each period: the
    seconds of steps in each period (the time between pieces of periodic work, so that on a GPU the
    steps' time is counted where the host waits for them) and the seconds of each piece of work."""

    started: float                       # time.perf_counter() when the run began (start-up included)
    periods: list[PlannedPeriod]         # from the image count the loop starts at
    opts: TrainOptions
    images: dict = field(default_factory=dict)    # period name -> images stepped
    seconds: dict = field(default_factory=dict)   # period name -> seconds of its steps
    costs: dict = field(default_factory=dict)     # "tick", "grid", "snapshot" -> (count, seconds)
    current: str | None = None
    mark: float = field(default_factory=time.perf_counter)
    announced: set = field(default_factory=set)

    @classmethod
    def for_run(cls, started: float, model, opts: TrainOptions, images_seen: int) -> "RunTimer":
        return cls(started, run_periods(model, opts, images_seen), opts)

    def _settle(self) -> float:
        now = time.perf_counter()
        if self.current is not None:
            self.seconds[self.current] = self.seconds.get(self.current, 0.0) + now - self.mark
        self.mark = now
        return now

    def stepped(self, period: str, images: int) -> None:
        """A step of `period` has just ended: its images and the time since the last mark are that
        period's (a run's first step too: without its time, a tick of one step measured no time)."""
        self.current = period
        self._settle()
        self.images[period] = self.images.get(period, 0) + images

    @contextlib.contextmanager
    def work(self, kind: str, count: int = 1):
        """Time `count` pieces of periodic work ("tick", "grid", "snapshot" files; any other kind, such
        as metrics, is only kept out of the steps' time)."""
        start = self._settle()
        try:
            yield
        finally:
            self.mark = time.perf_counter()
            done, seconds = self.costs.get(kind, (0, 0.0))
            self.costs[kind] = (done + count, seconds + self.mark - start)

    def mean_cost(self, kind: str) -> float | None:
        count, seconds = self.costs.get(kind, (0, 0.0))
        return seconds / count if count else None

    def estimate_line(self, images_seen: int, snapshot_seconds: Callable[[], float]) -> str | None:
        """The whole run's estimate from the speed measured so far, once per period (None after)."""
        name = self.current
        if name is None or name in self.announced or not self.images.get(name):
            return None
        self.announced.add(name)
        rate = self.seconds.get(name, 0.0) / self.images[name]  # seconds per image of this period
        remaining = [p for p in self.periods if p.start + p.images > images_seen]
        untimed = [p.name for p in remaining if not self.images.get(p.name)]
        steps_left = sum((p.start + p.images - max(p.start, images_seen)) * (self.seconds.get(p.name, 0.0) /
                         self.images[p.name] if self.images.get(p.name) else rate) for p in remaining)
        counts = periodic_counts(self.opts, remaining, new_run=False, start=images_seen)
        costs = PeriodicCosts(*(self.mean_cost(kind) for kind in ("tick", "grid", "snapshot")))
        if costs.snapshot is None:  # none written yet: one serialised in memory stands in
            costs.snapshot = snapshot_seconds()
        elapsed = time.perf_counter() - self.started
        left = steps_left + periodic_seconds(counts, costs)
        line = (f"estimate: the whole run about {clock(elapsed + left)}, {clock(left)} left (ends about "
                f"{ends_at(left)}), from {1 / rate:,.1f} img/s measured in {name} and the periodic work timed so far")
        if untimed:
            line += (f"; {', '.join(untimed[:2])}{' and later periods' if len(untimed) > 2 else ''} taken at this "
                     f"speed until reached (they are slower when larger; --plan times each)")
        if self.opts.metrics:
            line += "; --metrics not counted"
        return line

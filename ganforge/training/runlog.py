"""What a run writes as it trains, in one object: log.txt, stats.jsonl, TensorBoard, the progress
bar, and the sample grids. Rank 0 writes; the other ranks hold a RunLog that writes nothing.

On the console (stderr) a run shows a progress bar on a terminal (ganforge.progress decides, with
GANFORGE_PROGRESS), else its tick lines; --quiet hides both, never the warnings."""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path

import torch
from torchvision.utils import save_image

from ganforge.metrics.diversity import relative_diversity
from ganforge.inference import write_captions
from ganforge.models.base import TEXT, GanModel, Schedule
from ganforge.progress import enabled as bars_enabled
from ganforge.sampling import in_chunks
from ganforge.training.plots import plot_stats
from ganforge.training.rundir import kimg_label

WARNING = "warning: "  # log lines that start so reach the console even with --quiet
FIRST_LINE_AFTER = 5.0  # seconds of steps after which a console without a bar hears how the run goes (before a tick)
COLLAPSED = 0.25  # tick diversity (samples' spread / reals') below which log.txt warns of mode collapse


def save_grid(images: torch.Tensor, path: Path | io.BytesIO, columns: int) -> None:
    """A PNG grid of images in [-1, 1], to a file or into memory (a BytesIO: timing it writes nothing)."""
    try:
        save_image(images.float(), path, nrow=columns, normalize=True, value_range=(-1, 1), padding=1,
                   format="png" if isinstance(path, io.BytesIO) else None)
    except OSError:  # a full disk: a torn PNG would only break the timelapse later
        if not isinstance(path, io.BytesIO):
            Path(path).unlink(missing_ok=True)
        raise


class SampleGrid:
    """Fixed noise and conditions for the grids written during training: one row per class or caption."""

    def __init__(self, model: GanModel, seed: int, device: torch.device, columns: int = 10, max_images: int = 100):
        g = torch.Generator().manual_seed(seed + 12345)  # its own generator: grids never disturb training
        self.condition = model.grid_conditions(max(1, max_images // columns), columns).to(device)
        self.columns, self.device = columns, device
        self.z = model.sample_latents(len(self.condition) or max_images, generator=g).to(device)
        # A text-to-image grid's rows are captions: their texts are written beside each grid.
        self.captions = (model.captions.text_of(self.condition.captions[::columns])
                         if model.conditioning == TEXT else [])

    def images(self, model: GanModel) -> torch.Tensor:
        return in_chunks(len(self.z), lambda i, j: model.generate(self.z[i:j], self.condition[i:j])).to(self.device)

    def write(self, model: GanModel, path: Path) -> None:
        """The grid at `path` and, for a text-to-image model, its row captions beside it (fakes<kimg>.txt)."""
        save_grid(self.images(model), path, self.columns)
        if self.captions:
            write_captions(path, self.captions)


class _NoWriter:
    """TensorBoard stand-in for ranks other than 0."""

    def add_scalar(self, *args, **kwargs):
        pass

    def close(self):
        pass


class RunLog:
    """log.txt, stats.jsonl (one row per tick), TensorBoard, the progress bar and the grids of one run."""

    def __init__(self, run_dir: Path, main: bool, progress: bool, total: int, images_seen: int):
        """`progress`: whether the console follows the run (a bar, or tick lines where bars are hidden);
        False (--quiet) leaves the console only its warnings."""
        from torch.utils.tensorboard import SummaryWriter  # import here: tensorboard is slow to import
        from tqdm.auto import tqdm  # a notebook gets its own bar

        self.run_dir, self.main, self.progress, self.total = run_dir, main, progress and main, total
        show_bar = self.progress and bars_enabled()  # a pipe or a nohup'd log gets lines, not bar redraws
        self.text = open(run_dir / "log.txt" if main else os.devnull, "a", encoding="utf-8")
        self.stats = open(run_dir / "stats.jsonl" if main else os.devnull, "a", encoding="utf-8")
        self.tb = SummaryWriter(str(run_dir)) if main else _NoWriter()
        self.bar = tqdm(total=total, initial=min(images_seen, total), unit="img", unit_scale=True, dynamic_ncols=True,
                        smoothing=0.1, file=sys.stderr, disable=not show_bar)
        self.restart_tick(images_seen)
        self.collapse_warned = False
        self.grid: SampleGrid | None = None
        # A console without a bar (a pipe, a log) gets tick lines; the first may be minutes off (1 kimg of a
        # big model on a CPU), so a line comes a few seconds into the steps instead (begin_steps, add_step).
        self.first_line_due = self.progress and self.bar.disable
        self.begin_steps(images_seen, 0)

    def line(self, text: str) -> None:
        """A line of log.txt, shown on the console too (a warning even with --quiet)."""
        self.text.write(text + "\n")
        self.text.flush()
        if self.progress or text.startswith(WARNING):
            self.say(text)

    def say(self, text: str) -> None:
        """One line on the console (stderr), above the bar when there is one; rank 0 only."""
        if not self.main:
            return
        if self.bar.disable:
            print(text, file=sys.stderr, flush=True)
        else:
            self.bar.write(text, file=sys.stderr)

    # --- ticks ------------------------------------------------------------------------------
    def restart_tick(self, images_seen: int) -> None:
        self.tick_start, self.tick_images, self.tick_sums, self.tick_count = time.time(), images_seen, {}, 0

    def begin_steps(self, images_seen: int, tick_every: int) -> None:
        """The loop's first step is next: the speed of the first line is counted from here. `tick_every`:
        images between tick lines (--tick)."""
        self.steps_began, self.images_at_begin, self.steps_done = time.time(), images_seen, 0
        self.tick_every = tick_every
        self.after_first_step: tuple[float, int] | None = None  # (time, images): the first step warms up, slower

    def add_step(self, stats: dict, before: int, after: int) -> None:
        """A finished step's statistics (tensors, summed on the device until the tick) and the bar's advance."""
        for k, v in stats.items():
            self.tick_sums[k] = self.tick_sums.get(k, 0.0) + v.double()
        self.tick_count += 1
        self.bar.update(min(after, self.total) - min(before, self.total))
        self.steps_done += 1
        if self.after_first_step is None:
            self.after_first_step = (time.time(), after)
        elapsed = time.time() - self.steps_began
        # the speed of the steps after the first; a first step of minutes (a big model on a CPU) speaks for itself
        slow_first_step = elapsed >= 6 * FIRST_LINE_AFTER
        if self.first_line_due and elapsed >= FIRST_LINE_AFTER and (self.steps_done >= 2 or slow_first_step):
            self.first_line_due = False
            self.say(self.first_steps_line(after, elapsed))

    def first_steps_line(self, images_seen: int, elapsed: float) -> str:
        """Where the run stands after its first steps, what a bar would show: kimg, img/s and how long
        until the first tick line and the end, at the speed of the steps after the first (which warms up)."""
        import datetime

        if self.steps_done >= 2:  # the steps after the first, which warms up
            since, images_then = self.after_first_step
        else:  # one step of more than half a minute: its own speed
            since, images_then = self.steps_began, self.images_at_begin
        rate = (images_seen - images_then) / max(time.time() - since, 1e-9)
        next_tick = min((images_seen // self.tick_every + 1) * self.tick_every if self.tick_every else self.total,
                        self.total)
        left = lambda images: str(datetime.timedelta(seconds=round(max(images, 0) / max(rate, 1e-9))))  # noqa: E731
        return (f"first steps: {images_seen / 1000:.3f} of {self.total / 1000:g} kimg in {elapsed:.0f} s, "
                f"{rate:.1f} img/s; at this speed the first tick line comes in about {left(next_tick - images_seen)} "
                f"and the run ends in about {left(self.total - images_seen)}")

    def move_to(self, images_seen: int) -> None:
        """Back to an earlier count (a restored snapshot): the unfinished tick is dropped."""
        self.restart_tick(images_seen)
        self.bar.n = min(images_seen, self.total)
        self.bar.refresh()

    def tick(self, model: GanModel, sched: Schedule, images_seen: int, step: int,
             speed: tuple[float, float] | None = None) -> None:
        """One stats.jsonl row: mean losses since the last tick, speed, and the samples' diversity.
        `speed`: (training FLOPs per image, the GPU's bf16 peak in TFLOP/s) for the achieved TFLOP/s
        and the share of that peak (on GPUs whose peak is known)."""
        now = time.time()
        means = {k: (v / self.tick_count).item() for k, v in self.tick_sums.items()}
        row = {"kimg": images_seen / 1000, "step": step, "time": now, "resolution": sched.resolution,
               "batch": sched.batch, "alpha": sched.alpha,
               "img_per_sec": (images_seen - self.tick_images) / max(now - self.tick_start, 1e-9), **means}
        if speed is not None:
            row["tflop_per_sec"] = speed[0] * row["img_per_sec"] / 1e12
            row["share_of_bf16_peak"] = row["tflop_per_sec"] / speed[1]
        # A collapse signal beside the losses: how much the grid's samples vary, relative to reals.
        row["diversity"] = relative_diversity(self.grid.images(model), self.grid_reals)
        # Early samples of any model are alike: warn from 5 kimg on, once per fall below the line.
        collapsed = row["diversity"] < COLLAPSED and images_seen >= 5000
        if collapsed and not self.collapse_warned:
            self.line(f"warning: at {images_seen / 1000:.1f} kimg the samples are nearly alike (diversity "
                      f"{row['diversity']:.2f} of the reals'): the generator may be collapsing")
        self.collapse_warned = collapsed
        if self.grid.device.type == "cuda":
            row["peak_mem_gb"] = torch.cuda.max_memory_allocated(self.grid.device) / 2**30
        self.stats.write(json.dumps(row) + "\n")
        self.stats.flush()
        for k, v in row.items():
            if k not in ("kimg", "step", "time"):
                self.tb.add_scalar(k, v, global_step=images_seen)  # x axis in images shown, like kimg
        short = {k.split("/")[-1]: f"{v:.4g}" for k, v in {**means, "diversity": row["diversity"]}.items()}
        self.bar.set_postfix({"kimg": f"{images_seen / 1000:.1f}", **short})
        peak = f"  of bf16 peak {row['share_of_bf16_peak']:.1%}" if speed is not None else ""
        tick_line = (f"kimg {images_seen / 1000:8.1f}  step {step:7d}  img/s {row['img_per_sec']:7.1f}{peak}  "
                     + "  ".join(f"{k} {v}" for k, v in short.items()))
        self.text.write(tick_line + "\n")
        self.text.flush()
        self.first_line_due = False  # a tick line says more than the first line would
        if self.progress and self.bar.disable:  # no bar to follow the run: its tick lines instead
            self.say(tick_line)
        self.restart_tick(images_seen)

    def metrics(self, results: dict, images_seen: int, step: int) -> None:
        """One row per metric in metric-<name>.jsonl, TensorBoard, and a log line."""
        from ganforge.metrics.evaluate import headline, keep_in_run

        if not self.main:
            return
        kimg = images_seen / 1000
        keep_in_run(self.run_dir, results, images_seen, step)
        for name, result in results.items():
            self.tb.add_scalar(f"metrics/{name}", headline(name, result), global_step=images_seen)
        self.line(f"metrics at {kimg:.1f} kimg: " + ", ".join(f"{n} {headline(n, r):.4g}" for n, r in results.items()))

    # --- pictures ---------------------------------------------------------------------------
    def start_grids(self, model: GanModel, grid: SampleGrid, reals: torch.Tensor, first: bool, fine: bool) -> None:
        """The fixed grid and the real images beside it; a new run writes reals.png and the first grid."""
        self.grid, self.grid_reals = grid, reals
        if first and self.main:
            save_grid(reals, self.run_dir / "reals.png", grid.columns)
            self.grids(model, 0, fine)

    def grids(self, model: GanModel, images_seen: int, fine: bool) -> None:
        """fakes<kimg>.png, the model's own pictures (BEGAN: reconstructions<kimg>.png), stats.png."""
        if not self.main:
            return
        kimg = kimg_label(images_seen, fine)
        self.grid.write(model, self.run_dir / f"fakes{kimg}.png")
        with torch.no_grad():
            for name, images in model.visuals(self.grid_reals[:32]).items():
                save_grid(images, self.run_dir / f"{name}{kimg}.png", 8)
        plot_stats(self.run_dir)

    def period_grid(self, model: GanModel, period: str) -> None:
        """period-<name>.png: the grid at the end of a period of the schedule (PGGAN's fades and stabilisations)."""
        if self.main and period:
            self.grid.write(model, self.run_dir / f"period-{period}.png")

    def close(self) -> None:
        self.bar.close()
        self.tb.close()
        self.text.close()
        self.stats.close()


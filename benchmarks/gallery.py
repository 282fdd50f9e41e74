"""Build the results gallery (docs/results/) from finished run directories.

    python benchmarks/gallery.py --run pggan=runs/00003-pggan-emoji --run dfgan=runs/00004-dfgan-cub_birds \\
        --out docs/results --device "one NVIDIA H200"

For each run, taken as it is (no picking among seeds):
- `<name>.png`: the run's last fixed-noise training grid (fakes<kimg>.png), scaled to at most
  --width pixels; for a text-to-image run, `<name>-prompts.png` too: one row of samples per prompt
  with the prompt written beside it (--prompt, repeatable; the defaults include prompts unlike any
  training caption).
- `<name>-curves.png`: each metric the run evaluated during training (`--metrics`) against kimg.
- a row of `index.md`: kimg reached, the device, wall time, the last value of each metric and the
  exact command that trains the run again.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from PIL import Image, ImageDraw
from torchvision.utils import make_grid

from ganforge.data import to_uint8
from ganforge.inference import generate_from_prompts, load_model
from ganforge.metrics.evaluate import METRICS
from ganforge.models.base import TEXT
from ganforge.training.options import TrainOptions
from ganforge.training.plots import read_jsonl, read_stats

DEFAULT_PROMPTS = ["this bird has a red crown and a short black beak",  # the CUB captions' own style
                   "a small yellow bird with black wings sitting on a branch",
                   "a blue bird standing in the snow",                    # unlike any training caption
                   "a bird made of green glass"]
COMMAND_SKIP = {"outdir", "device", "workers", "channels", "processes"}  # where a run goes or runs, not what it learns


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="append", required=True, metavar="NAME=RUN_DIR")
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    parser.add_argument("--device", default=None, help="what trained the runs, for the table [default: log.txt's]")
    parser.add_argument("--prompt", action="append", default=None, help="text-to-image rows (repeatable)")
    parser.add_argument("--width", type=int, default=512, help="largest width of a grid in pixels")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, run in (item.split("=", 1) for item in args.run):
        run = Path(run)
        pictures = [grid_picture(run, args.out / f"{name}.png", args.width)]
        model = load_model(run)
        if model.conditioning == TEXT:
            pictures.append(prompt_rows(model, args.prompt or DEFAULT_PROMPTS, args.out / f"{name}-prompts.png"))
        curves = metric_curves(run, name, args.out / f"{name}-curves.png")
        rows.append(summary_row(name, run, args.device, [p.name for p in pictures + ([curves] if curves else [])]))
        print(json.dumps(rows[-1]), flush=True)
    write_index(rows, args.out / "index.md")
    print(f"wrote {args.out / 'index.md'}")
    return 0


def grid_picture(run: Path, out: Path, width: int) -> Path:
    """The run's last fixed-noise grid, nearest-neighbour scaled down (never up) to `width`."""
    grids = sorted(run.glob("fakes*.png"))
    if not grids:
        raise SystemExit(f"{run}: no sample grid (fakes*.png)")
    grid = Image.open(grids[-1]).convert("RGB")
    if grid.width > width:
        grid = grid.resize((width, round(grid.height * width / grid.width)), Image.LANCZOS)
    grid.save(out, optimize=True)
    return out


def prompt_rows(model, prompts: list[str], out: Path, per_prompt: int = 8, seed: int = 0) -> Path:
    """One row of samples per prompt (the same noise in every row), the prompt written at its left."""
    images = to_uint8(generate_from_prompts(model, prompts, per_prompt, seed))
    size, text_width = images.shape[-1], 360
    canvas = Image.new("RGB", (text_width + per_prompt * (size + 2), len(prompts) * (size + 2)), "white")
    draw = ImageDraw.Draw(canvas)
    for row, prompt in enumerate(prompts):
        strip = make_grid(images[row * per_prompt:(row + 1) * per_prompt], nrow=per_prompt, padding=2, pad_value=255)
        canvas.paste(Image.fromarray(strip.permute(1, 2, 0).numpy()), (text_width, row * (size + 2)))
        draw.text((4, row * (size + 2) + size // 2 - 6), prompt[:58], fill="black")
    canvas.save(out, optimize=True)
    return out


def metric_curves(run: Path, name: str, out: Path) -> Path | None:
    """One panel per metric file of the run: its headline number against kimg."""
    files = sorted(run.glob("metric-*.jsonl"))
    if not files:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(files), figsize=(4 * len(files), 3), squeeze=False)
    for ax, path in zip(axes[0], files):
        metric = path.stem[len("metric-"):]
        key = METRICS[metric].headline if metric in METRICS else None
        rows = [r for r in read_jsonl(path) if key in r]
        ax.plot([r["kimg"] for r in rows], [r[key] for r in rows], marker=".")
        ax.set_title(f"{name}: {metric} ({key})", fontsize=9)
        ax.set_xlabel("kimg")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def summary_row(name: str, run: Path, device: str | None, pictures: list[str]) -> dict:
    stats = read_stats(run)
    options = json.loads((run / "training_options.json").read_text())
    final = {}
    for path in sorted(run.glob("metric-*.jsonl")):
        metric = path.stem[len("metric-"):]
        rows = read_jsonl(path)
        key = METRICS[metric].headline if metric in METRICS else None
        if rows and key in rows[-1]:
            final[metric] = round(rows[-1][key], 4)
    return {"name": name, "kimg": round(stats[-1]["kimg"], 1) if stats else 0.0,
            "device": device or logged_device(run), "wall": wall_time(stats), "metrics": final,
            "command": train_command(options), "pictures": pictures}


def logged_device(run: Path) -> str:
    """The device log.txt's first line names ("starting ... on cuda: ...")."""
    first = (run / "log.txt").read_text(encoding="utf-8").splitlines()[:1]
    return first[0].split(" on ", 1)[1].split(":", 1)[0] if first and " on " in first[0] else "?"


def wall_time(stats: list[dict]) -> str:
    """Training time from the stats rows' clocks; a gap over ten minutes is a stop before a resume."""
    times = [r["time"] for r in stats if "time" in r]
    seconds = sum(b - a for a, b in zip(times, times[1:]) if b - a < 600)
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def train_command(options: dict) -> str:
    """The `ganforge train` line that sets every option of the run that differs from the default."""
    defaults = TrainOptions().to_json()
    not_options = {f.name for f in fields(TrainOptions) if not f.metadata["cli"]}  # the run's identity, model_opts
    words = ["ganforge", "train"]
    for key, value in options.items():
        if key in COMMAND_SKIP or key in not_options or value == defaults.get(key):
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            words.append(flag)
        elif value is not False and value is not None:
            words += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    for key, value in options.get("model_opts", {}).items():
        words += ["--model-opt", f"{key}={value}"]
    return " ".join(words)


def write_index(rows: list[dict], out: Path) -> None:
    lines = ["| run | kimg | device | wall | metrics (last) | command |", "|---|---|---|---|---|---|"]
    for r in rows:
        metrics = ", ".join(f"{k} {v:g}" for k, v in r["metrics"].items()) or "-"
        lines.append(f"| {r['name']} | {r['kimg']:g} | {r['device']} | {r['wall']} | {metrics} | `{r['command']}` |")
    for r in rows:
        lines += ["", f"### {r['name']}", ""] + [f"![{r['name']}: {p}]({p})" for p in r["pictures"]]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())

"""Charts of a run's stats.jsonl against kimg (losses, and model measures such as BEGAN's M_global)."""

from __future__ import annotations

import json
from pathlib import Path

from ganforge.metrics.protocol import differences, shown

SKIP = {"kimg", "step", "time", "batch", "resolution", "alpha", "img_per_sec", "peak_mem_gb"}
METRIC_SKIP = {"kimg", "step", "n_fake", "n_real", "seconds", "subset_size", "k", "pairs", "n"}


def own_file(run_dir: str | Path, path: Path) -> bool:
    """Whether `path` is a regular file of the run itself. A symbolic link is not: it may lead to any
    file on the machine, which the studio would then serve; runs never write links."""
    return path.parent == Path(run_dir) and path.is_file() and not path.is_symlink()


def own_files(run_dir: str | Path, pattern: str) -> list[Path]:
    """The run's own regular files matching `pattern`, sorted."""
    return sorted(p for p in Path(run_dir).glob(pattern) if own_file(run_dir, p))


def read_stats(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "stats.jsonl"
    if not own_file(run_dir, path):
        return []
    return read_jsonl(path)


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a .jsonl log; a line torn by a kill (the last one, mid-write) is skipped, and so is any
    line that is not a row at a number of kimg (a file edited by hand or by another program)."""
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("kimg"), (int, float)) and not isinstance(row["kimg"], bool):
            rows.append(row)
    return rows


def own_panel_groups(run_dir: str | Path) -> tuple[str, ...]:
    """The stat groups the run's model charts one series per panel (its `stat_panels`)."""
    try:
        path = Path(run_dir) / "training_options.json"
        model = json.loads(path.read_text(encoding="utf-8"))["model"] if own_file(run_dir, path) else ""
        from ganforge.models import model_class

        return model_class(model).stat_panels
    except (OSError, ValueError, KeyError):  # no options file, or a model no longer registered
        return ()


def plot_stats(run_dir: str | Path, out: str | Path | None = None) -> Path | None:
    """stats.png: one panel per group of series (loss/..., began/..., ...), x axis in kimg."""
    rows = read_stats(run_dir)
    if len(rows) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in rows for k, v in r.items() if k not in SKIP and isinstance(v, (int, float))})
    groups: dict[str, list[str]] = {}
    for k in keys:
        groups.setdefault(k.split("/")[0] if "/" in k else "other", []).append(k)
    own = [k for group in own_panel_groups(run_dir) for k in groups.pop(group, [])]
    panels = [[k] for k in own] + list(groups.values())  # a model's own measures each on a panel
    metric_panels = metric_series(run_dir)
    panels += [list(series) for series in metric_panels.values()]
    measured = {label: points for series in metric_panels.values() for label, points in series.items()}
    if not panels:  # rows without a single number to chart
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.6 * len(panels)), sharex=True, squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        for k in panel:
            xs, ys = measured.get(k) or ([r["kimg"] for r in rows if k in r], [r[k] for r in rows if k in r])
            ax.plot(xs, ys, label=k, linewidth=1, marker="." if k in measured else None)
        ax.legend(loc="upper right", fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("kimg")
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "stats.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def metric_series(run_dir: str | Path) -> dict[str, dict[str, tuple[list, list]]]:
    """{metric: {"metric:key": (kimg, values)}}: every number of each of the run's metric-<name>.jsonl,
    one panel per metric. Rows measured under another protocol than the file's first (an `evaluate
    RUN --n 1000` beside training's --metrics-n 5000) are a series of their own, labelled with the
    fields that differ: their figures are not points of the same curve."""
    panels = {}
    for path in own_files(run_dir, "metric-*.jsonl"):
        name = path.stem[len("metric-"):]
        by_protocol: dict[str, list[dict]] = {}
        for row in read_jsonl(path):
            by_protocol.setdefault(json.dumps(row.get("protocol"), sort_keys=True), []).append(row)
        first = json.loads(next(iter(by_protocol), "null"))
        series = {}
        for stamp, rows in by_protocol.items():
            differing = differences({"first": first or {}, "these": json.loads(stamp) or {}})
            suffix = "".join(f", {field} {shown(values['these'])}" for field, values in differing.items() if "these" in values)
            keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and k not in METRIC_SKIP})
            for k in keys:  # rows whose protocol differs in no stated field join the first series
                xs, ys = series.setdefault(f"{name}:{k}" + (f" ({suffix[2:]})" if suffix else ""), ([], []))
                xs += [r["kimg"] for r in rows if k in r]
                ys += [r[k] for r in rows if k in r]
        if series:
            panels[name] = {label: _by_kimg(*points) for label, points in series.items()}
    return panels


def _by_kimg(xs: list, ys: list) -> tuple[list, list]:
    """Points in kimg order (a snapshot evaluated later may be an earlier one)."""
    order = sorted(range(len(xs)), key=xs.__getitem__)
    return [xs[i] for i in order], [ys[i] for i in order]

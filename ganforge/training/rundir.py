"""A run directory: made and numbered, locked while trained, checked before it is resumed, and
its logs cut back to the snapshot a resumed run continues from."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ganforge.errors import TrainingError


def make_run_dir(outdir: str | Path, desc: str) -> Path:
    """runs/00000-<desc>/, numbered one past the highest existing run."""
    outdir = Path(outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        ids = [int(p.name[:5]) for p in outdir.iterdir() if p.is_dir() and p.name[:5].isdigit()]
        run_dir = outdir / f"{max(ids, default=-1) + 1:05d}-{desc}"
        run_dir.mkdir()
    except OSError as e:
        raise TrainingError(f"--outdir {outdir}: cannot make a run directory there ({e.strerror or e})") from e
    return run_dir


def job_note(outdir: str | Path, job: str) -> Path:
    """`.torchrun-<job>` in --outdir: the run directory a torchrun job opened, for its restarted workers."""
    return Path(outdir) / f".torchrun-{''.join(ch if ch.isalnum() or ch in '-_' else '_' for ch in job)}"


def dataset_desc(data: str) -> str:
    """The data's part of a run's name: the folder or file name; for tar shards ('lsun/{000000..000099}.tar',
    'lsun/000003.tar') the folder that holds them, or 'shards'."""
    path = Path(data.rstrip("/"))
    name = path.stem if data != "mnist" else "mnist"
    if "{" in path.name or path.suffix == ".tar":  # a shard's own name says nothing of the data
        name = path.parent.name or "shards"
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name) or "data"


OWN_TEMPORARY = re.compile(r"\.(latest|best|snapshot-\d+(k\d+)?)\.pt\.\d+\.tmp|\.training_options\.json\.tmp|\.lock\.\d+\.tmp")


RUN_FILES = re.compile(r"(latest|best|snapshot-\d+(k\d+)?)\.pt|training_options\.json|stats\.jsonl|log\.txt|metric-.+\.jsonl"
                       # its pictures: the grid of each kimg (and a text run's captions beside it), what a model
                       # draws of its own at each kimg (BEGAN's reconstructions), the reals, each period's grid, the plot
                       r"|[a-z_]+\d{6}(k\d{3})?\.(png|txt)|reals\.png|period-.+\.png|stats\.png|events\.out\.tfevents\..+")


# What a run writes besides its snapshots: a new run that stops before its first snapshot takes
# these with its directory (anything else there is someone else's and keeps the directory).
WRITTEN_BY_RUN = re.compile(r"training_options\.json|log\.txt|stats\.(jsonl|png)|metric-.+\.jsonl|"
                            r"[a-z_-]+\d{6}(k\d{3})?\.png|fakes\d{6}(k\d{3})?\.txt|reals\.png|growth\.png|period-.+\.(png|txt)|"
                            r"events\.out\.tfevents\..+|\.lock")


def remove_unless_kept(run_dir: Path) -> bool:
    """Remove a new run's directory when it holds neither a snapshot nor a tick's statistics, so a run
    stopped or failed before its first tick leaves no empty directory behind: ganforge's own files go,
    then the directory if nothing else is in it. A run that ticked keeps its log and grids, which say
    what happened before it failed. Returns whether it is gone."""
    if not run_dir.is_dir():  # removed while the run wrote in it: nothing left to remove
        return True
    stats = run_dir / "stats.jsonl"
    if any(run_dir.glob("*.pt")) or (stats.exists() and stats.stat().st_size > 0):
        return False
    for path in run_dir.iterdir():
        if path.is_file() and (WRITTEN_BY_RUN.fullmatch(path.name) or OWN_TEMPORARY.fullmatch(path.name)):
            path.unlink(missing_ok=True)
    try:
        run_dir.rmdir()
    except OSError:  # something of someone else's is in it
        return False
    return True


def kept_in_run(path: str | Path) -> bool:
    """Whether `path` is a file ganforge keeps in a run directory (a snapshot, the options, the logs,
    the grids drawn during training): an output written there would destroy the run's work."""
    path = Path(path).resolve()
    return bool(RUN_FILES.fullmatch(path.name)) and (path.parent / "training_options.json").is_file()


def check_run_directory(run_dir: Path, snapshot: dict) -> None:
    """Resume only into a run directory ganforge made for this snapshot's model: a resumed run
    rewrites its logs and snapshots, which must never happen to a folder that is not a run's."""
    options = run_dir / "training_options.json"
    if not options.exists():
        raise TrainingError(f"--resume {snapshot['path']}: {run_dir} is not a ganforge run directory (no "
                            "training_options.json); resume from the run directory the snapshot came from")
    try:
        saved = json.loads(options.read_text(encoding="utf-8"))
        model, run_id = saved["model"], saved.get("run_id")
    except (ValueError, KeyError, AttributeError) as e:
        raise TrainingError(f"--resume: {options} is unreadable ({e})") from e
    if model != snapshot["model"]:
        raise TrainingError(f"--resume {snapshot['path']}: the snapshot holds {snapshot['model']} but the run "
                            f"directory {run_dir} is a {model} run; it was copied from another run")
    snapshot_run = snapshot["options"].get("run_id")
    if snapshot_run != run_id:  # both None: runs from before runs had an identity
        raise TrainingError(f"--resume {snapshot['path']}: the snapshot belongs to run {snapshot_run}, the run "
                            f"directory {run_dir} to run {run_id} (run_id in training_options.json); it was copied "
                            "from another run: resume that run's own directory, or start a new run")


def write_options(run_dir: Path, opts, processes: int = 1) -> None:
    """training_options.json: the run's options, and the number of processes that train it now."""
    tmp = run_dir / ".training_options.json.tmp"
    tmp.write_text(json.dumps({**opts.to_json(), "processes": processes}, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, run_dir / "training_options.json")


def truncate_logs(run_dir: Path, step: int) -> None:
    """Drop log rows after `step` (and any line torn by a kill) from stats.jsonl and metric-*.jsonl."""
    for path in [run_dir / "stats.jsonl", *run_dir.glob("metric-*.jsonl")]:
        if not path.exists():
            continue
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                pass
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
        os.replace(tmp, path)


def kimg_label(images_seen: int, fine: bool) -> str:
    """The kimg in file names: whole kimg (000025), or with `fine` (intervals under 1 kimg) also the
    images beyond it (000001k500), so that names never collide and sort in training order."""
    return f"{images_seen // 1000:06d}" + (f"k{images_seen % 1000:03d}" if fine else "")


class RunLock:
    """`.lock` in a run directory holds the training process's id and start (`process_start`): a second
    process refuses to train the same run (their logs and snapshots would interleave); a lock left by
    a process that no longer runs (killed, crashed), or whose id now belongs to another process that
    started later, is taken over, and `took_over` says so for log.txt."""

    def __init__(self, run_dir: Path):
        self.path, self.took_over = run_dir / ".lock", ""
        holder, started = lock_holder(self.path)
        if holder is not None and holder != os.getpid():
            alive = running(holder)
            if holds_lock(holder, started):
                raise TrainingError(f"{run_dir} is being trained by process {holder} (its .lock); wait for it to "
                                    f"finish or stop it, then resume")
            self.took_over = (f"note: took over the lock of process {holder}, which no longer runs" if not alive else
                              f"note: took over the lock of process {holder}, which no longer runs (its id now "
                              "belongs to another process)")
        tmp = self.path.with_name(f".lock.{os.getpid()}.tmp")
        tmp.write_text(f"{os.getpid()} {process_start(os.getpid()) or ''}".strip())
        os.replace(tmp, self.path)

    def release(self) -> None:
        if lock_holder(self.path)[0] == os.getpid():
            self.path.unlink(missing_ok=True)


def lock_holder(path: Path) -> tuple[int | None, str | None]:
    """A `.lock`'s process id, and its start where the lock recorded one (older locks hold the id alone)."""
    try:
        fields = path.read_text().split()
        return int(fields[0]), (fields[1] if len(fields) > 1 else None)
    except (OSError, ValueError, IndexError):
        return None, None


def holds_lock(pid: int | None, started: str | None) -> bool:
    """Whether the process that wrote a lock still runs: its id is alive and, where the lock recorded
    its start, the process with that id started then (not a later one given the same id)."""
    return pid is not None and running(pid) and (started is None or process_start(pid) in (None, started))


def run_is_training(run_dir: Path) -> bool:
    """Whether a live process trains the run (holds its `.lock`)."""
    return holds_lock(*lock_holder(run_dir / ".lock"))


def process_start(pid: int) -> str | None:
    """What tells a process apart from a later one given the same id: this boot's id and the process's
    start time since boot (Linux's /proc); None where they cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{stat.rpartition(')')[2].split()[19]}"  # field 22, starttime (the name may hold spaces)
    except (OSError, IndexError):
        return None


def running(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it runs
        return True
    return True


def run_summary(run_dir: str | Path) -> dict:
    """What `ganforge runs` and `ganforge info` say of a run: its options, the kimg it reached (its
    last stats row) of those planned, whether a process trains it now (else finished or stopped),
    and the last row of each metric-<name>.jsonl."""
    from ganforge.training.plots import read_jsonl, read_stats

    run_dir = Path(run_dir)
    try:
        options = json.loads((run_dir / "training_options.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        options = {}
    stats = read_stats(run_dir)
    reached, planned = (stats[-1]["kimg"] if stats else 0.0), options.get("kimg")
    last_write = stats[-1].get("time") if stats else None
    # A run stopped between ticks (Ctrl-C before its first one, say) got further than its last stats
    # row: its snapshot holds where it stopped, what --resume continues from.
    saved = snapshot_progress(run_dir)
    if saved is not None and saved[0] > reached:
        reached, last_write = saved
    state = ("training" if run_is_training(Path(run_dir)) else "finished" if planned and reached >= planned else "stopped")
    metrics = {path.stem[len("metric-"):]: rows[-1] for path in sorted(run_dir.glob("metric-*.jsonl"))
               if (rows := read_jsonl(path))}
    # the size the run trains at by now (a progressive run grows to --resolution), from its last stats row
    grown = stats[-1].get("resolution") if stats else None
    return {"run": run_dir, "options": options, "kimg": reached, "planned": planned, "state": state,
            "last_write": last_write, "metrics": metrics, "resolution_reached": grown}


def snapshot_progress(run_dir: Path) -> tuple[float, float] | None:
    """The kimg of a run's newest snapshot and when it was written; None without a readable one. Only
    its small entries are read (the tensors are mapped, not loaded), so a large snapshot costs nothing."""
    import torch

    from ganforge.snapshots import find_snapshot

    try:
        path = find_snapshot(run_dir)
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return state["images_seen"] / 1000, path.stat().st_mtime
    except Exception:  # noqa: BLE001 - no snapshot, a torn or foreign file: the stats row is all there is
        return None


def growth_picture(run_dir: Path) -> Path | None:
    """growth.png: the grid of every period side by side, upscaled to the largest (nearest, so pixels show)."""
    from PIL import Image

    paths = sorted(run_dir.glob("period-*.png"))
    if len(paths) < 2:
        return None
    grids = [Image.open(p).convert("RGB") for p in paths]
    width = min(max(g.size[0] for g in grids), 512)
    strip = Image.new("RGB", (width * len(grids), width), "white")
    for i, g in enumerate(grids):
        strip.paste(g.resize((width, width), Image.NEAREST), (i * width, 0))
    strip.save(run_dir / "growth.png")
    return run_dir / "growth.png"

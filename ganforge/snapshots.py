"""Snapshots: everything a run needs to continue exactly, written atomically, loaded without pickled code.

A snapshot is a torch.save file holding only tensors, numbers, strings, lists and dicts, and it is
always read with `torch.load(weights_only=True)`, so a crafted file cannot run code. It is written
to a temporary file in the same folder, flushed to disk, then renamed over the old one: a crash or
kill at any moment leaves either the old or the new snapshot, never a torn one.
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
from pathlib import Path

import torch

from ganforge.errors import GanforgeError

FORMAT_VERSION = 1
LATEST = "latest.pt"


class SnapshotError(GanforgeError, ValueError):
    """A snapshot that cannot be used: the message names the file."""


def save_snapshot(path: str | os.PathLike, state: dict) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format_version": FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except RuntimeError as e:
        # torch's zip writer reports a failed write (a full disk, mostly) as a RuntimeError from
        # its C++ core ("[enforce fail at inline_container.cc] ... unexpected pos"), not an OSError.
        tmp.unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free
        raise OSError(errno.ENOSPC if free < 64 << 20 else errno.EIO,
                      f"the write failed ({free / 2**20:.0f} MiB free on its disk)") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def check_shapes(saved: dict, expected: dict, path: str | os.PathLike) -> None:
    """Refuse a snapshot whose tensors do not fit the networks built for it (an edited or damaged
    file), naming the first tensor that is missing, extra or of another shape, with both shapes."""
    for name, tensor in expected.items():
        if name not in saved:
            raise SnapshotError(f"{path}: tensor {name} is missing; the snapshot does not fit its own networks")
        got = saved[name]
        if not isinstance(got, torch.Tensor) or got.shape != tensor.shape:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise SnapshotError(f"{path}: tensor {name} has shape {shape}, the networks expect "
                                f"{tuple(tensor.shape)}; the snapshot does not fit its own networks")
    extra = sorted(set(saved) - set(expected))
    if extra:
        raise SnapshotError(f"{path}: tensor {extra[0]} is not one of the networks'; the snapshot does not fit them")


def keep_snapshot(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """`path` as a second name of the complete snapshot `source`: a hard link, so a run's latest.pt
    and the kept snapshot of the same step are one file on disk, not two identical copies. Safe
    because no snapshot is ever rewritten in place (each write makes a new file and renames it): the
    next latest.pt gets a new file and the kept one stays as it was. Made atomically; where the file
    system has no hard links, a copy."""
    source, path = Path(source), Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def find_snapshot(run_or_snapshot: str | os.PathLike) -> Path:
    """A snapshot file as given, or a run directory's latest snapshot."""
    p = Path(run_or_snapshot)
    if p.is_dir():
        if (p / LATEST).exists():
            return p / LATEST
        periodic = sorted(p.glob("snapshot-*.pt"))
        if periodic:
            return periodic[-1]
        raise SnapshotError(f"{p}: no snapshot in this run directory (expected {LATEST} or snapshot-*.pt)")
    if not p.exists():
        raise SnapshotError(f"{p}: no such snapshot file or run directory")
    return p


def load_snapshot(run_or_snapshot: str | os.PathLike, map_location="cpu") -> dict:
    path = find_snapshot(run_or_snapshot)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" not in str(e):  # not a pickle at all: garbage or a truncated file
            raise SnapshotError(f"{path}: not a readable ganforge snapshot (corrupt or not a torch file)") from e
        blocked = next((ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln), "")
        raise SnapshotError(f"{path}: refused to load: the file holds objects other than tensors and numbers "
                            f"and could run code when unpickled ({blocked})") from e
    except Exception as e:  # noqa: BLE001 - truncated, not a torch file, ...
        raise SnapshotError(f"{path}: not a readable ganforge snapshot ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or "format_version" not in state:
        raise SnapshotError(f"{path}: not a ganforge snapshot")
    if state["format_version"] > FORMAT_VERSION:
        raise SnapshotError(f"{path}: written by a newer ganforge (format {state['format_version']}, this reads "
                            f"up to {FORMAT_VERSION}); upgrade ganforge to use it")
    state["path"] = str(path)
    return state

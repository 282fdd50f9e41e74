"""Finding the places where a training step makes the host wait for the device.

On a GPU, every read of a device value by Python (`.item()`, `bool(t)`, `float(t)`, `.tolist()`,
`.cpu()`, `.numpy()`), every output whose shape depends on the data (a boolean mask, `nonzero`) and
every Python number turned into a device tensor (`torch.tensor(x, device=...)`, a blocking copy from
pageable memory) stops the CPU until the GPU has caught up, so kernels stop queueing ahead and small
networks run at the speed of Python. CUDA's own `torch.cuda.set_sync_debug_mode` sees these only on
a GPU; `HostReads` sees the same operations on any device, the CPU included, so tests can hold a step
to having none.

Written by hand: PyTorch has no CPU-side equivalent of the CUDA sync debug mode. It watches the
dispatcher (a TorchDispatchMode) and the few Tensor methods that read memory without dispatching,
and judges the code that calls PyTorch, not PyTorch's internals: on the CPU those cannot be told
from host-side bookkeeping (Adam keeps its step counts on the host), and on a GPU CUDA's own
account, which `HostReads` takes there as well, covers them.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ganforge.errors import OptionError

_PACKAGE = str(Path(__file__).resolve().parent)
_TORCH = str(Path(torch.__file__).resolve().parent)
# Frames PyTorch puts in front of every dispatch mode call: not the caller of the operation.
_PLUMBING = (str(Path(_TORCH) / "_compile.py"), str(Path(_TORCH) / "_dynamo"))

# Operations that wait for a device value, or copy a host value to the device, whatever the device.
_WAITING_OPS = {
    torch.ops.aten._local_scalar_dense.default: "a device value read by Python (.item(), bool(), float(), int())",
    torch.ops.aten.nonzero.default: "an output shaped by the data (nonzero)",
    torch.ops.aten.masked_select.default: "an output shaped by the data (masked_select)",
    torch.ops.aten.lift_fresh.default: "a Python value made into a tensor (torch.tensor: a blocking host-to-device copy)",
}
# Tensor methods that read device memory without going through the dispatcher on the CPU.
_READING_METHODS = ("tolist", "numpy", "cpu")


class HostSyncError(RuntimeError):
    """A step waited for the host where it must not."""


class HostReads(TorchDispatchMode):
    """Within the block, each operation that would make the host wait for the device is counted by
    where in ganforge it happens (`counts`, `where`), or refused at once with `strict`.

        with HostReads(strict=True):
            step()          # raises HostSyncError at the first host read
    """

    def __init__(self, strict: bool = False, device: torch.device | None = None):
        super().__init__()
        self.strict, self.device = strict, device
        self.counts: Counter[str] = Counter()  # "file:line (what)" -> times
        self.cuda_counts: Counter[str] = Counter()  # what CUDA's own sync debug mode reported, on a GPU
        self.waited = 0.0  # seconds the host spent in the reads it saw

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __enter__(self):
        self._methods = {name: getattr(torch.Tensor, name) for name in _READING_METHODS}
        for name, method in self._methods.items():
            setattr(torch.Tensor, name, self._watched(name, method))
        self._cuda = self.device is not None and self.device.type == "cuda"
        if self._cuda:  # the GPU's own account too: it also sees syncs inside PyTorch (a pageable copy, say)
            self._caught = warnings.catch_warnings(record=True)
            self._warnings = self._caught.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        return super().__enter__()

    def __exit__(self, *exc):
        for name, method in self._methods.items():
            setattr(torch.Tensor, name, method)
        if self._cuda:
            torch.cuda.set_sync_debug_mode("default")
            self._caught.__exit__(*exc)
            for w in self._warnings:
                if "synchroniz" in str(w.message):
                    self.cuda_counts[f"{relative(w.filename)}:{w.lineno}"] += 1
                else:  # not ours to keep
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return super().__exit__(*exc)

    def _watched(self, name: str, method):
        def read(tensor, *args, **kwargs):
            if not made_by_pytorch():
                self._found(f"a device value read by Python (.{name}())")
            return method(tensor, *args, **kwargs)

        return read

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        what = _WAITING_OPS.get(func)
        if what is None and func is torch.ops.aten.index.Tensor and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1]):
            what = "an output shaped by the data (a boolean mask)"
        if what is not None and made_by_pytorch():
            # PyTorch's own bookkeeping, which it keeps on the host (Adam's step counts): on the CPU it
            # cannot be told from device values; on a GPU, CUDA's sync debug mode judges it.
            what = None
        if what is None:
            return func(*args, **kwargs)
        self._found(what)
        start = time.perf_counter()
        out = func(*args, **kwargs)  # the wait itself: the host blocks here until the device is done
        self.waited += time.perf_counter() - start
        return out

    def _found(self, what: str) -> None:
        place = where_in_ganforge()
        if self.strict:
            raise HostSyncError(f"the host waits for the device at {place}: {what}")
        self.counts[f"{place} ({what})"] += 1


def where_in_ganforge() -> str:
    """file:line of the innermost ganforge frame of the caller (this module's own left out)."""
    for frame in reversed(traceback.extract_stack()):
        if frame.filename.startswith(_PACKAGE) and not frame.filename.endswith("hostsync.py"):
            return f"{relative(frame.filename)}:{frame.lineno}"
    return "outside ganforge"


def made_by_pytorch() -> bool:
    """Whether the innermost Python frame is PyTorch's own code (this module's frames and the ones
    PyTorch puts in front of every dispatch mode left out)."""
    for frame in reversed(traceback.extract_stack()):
        if not frame.filename.endswith("hostsync.py") and not frame.filename.startswith(_PLUMBING):
            return frame.filename.startswith(_TORCH)
    return False


def relative(filename: str) -> str:
    return str(Path(filename).relative_to(Path(_PACKAGE).parent)) if filename.startswith(_PACKAGE) else filename


class StepCensus:
    """HostReads around each step of a run (`with census(): step()`), summed over the steps:
    `GANFORGE_HOST_SYNCS=count` writes the summary to the run's log.txt, `=refuse` stops the run
    at the first host read inside a step (the tests' guard)."""

    def __init__(self, strict: bool = False, device: torch.device | None = None):
        self.strict, self.device = strict, device
        self.counts: Counter[str] = Counter()
        self.cuda_counts: Counter[str] = Counter()
        self.waited = 0.0
        self.steps = 0

    @contextlib.contextmanager
    def __call__(self):
        reads = HostReads(self.strict, self.device)
        with reads:
            yield
        self.counts.update(reads.counts)
        self.cuda_counts.update(reads.cuda_counts)
        self.waited += reads.waited
        self.steps += 1

    def summary(self) -> list[str]:
        """Lines for log.txt: syncs per step, and where."""
        per_step = lambda counts: sum(counts.values()) / max(self.steps, 1)  # noqa: E731
        lines = [f"host syncs per step: {per_step(self.counts):g} seen by ganforge"
                 + (f", {per_step(self.cuda_counts):g} reported by CUDA" if self.device and self.device.type == "cuda"
                    else "") + f" (over {self.steps} steps)"]
        for where, n in (self.counts + self.cuda_counts).most_common():
            lines.append(f"  {n / max(self.steps, 1):g} per step at {where}")
        return lines


def census_from_env(device: torch.device) -> StepCensus | None:
    """The census GANFORGE_HOST_SYNCS asks for (count or refuse), or None."""
    mode = os.environ.get("GANFORGE_HOST_SYNCS", "")
    if mode not in ("", "count", "refuse"):
        raise OptionError(f"GANFORGE_HOST_SYNCS={mode}: count or refuse (or unset)")
    return StepCensus(strict=mode == "refuse", device=device) if mode else None

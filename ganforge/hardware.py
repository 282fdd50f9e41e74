"""Where and how fast the networks run: the device, the arithmetic (tf32, bf16/fp16 autocast and
loss scaling), the memory layout and compilation. Training runs and bench set up through here
alone, so a timed step is the step a run takes."""

from __future__ import annotations

import contextlib
import sys
import warnings

import torch

from ganforge.errors import TrainingError


# Dense bf16 tensor-core peaks (TFLOP/s) from the makers' data sheets, by a part of the device's name.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0}


def bf16_peak_tflops(device: torch.device) -> float | None:
    """The GPU's bf16 peak, where it is in BF16_PEAK_TFLOPS (None on a CPU or an unknown GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for part, peak in BF16_PEAK_TFLOPS.items() if part in name), None)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise TrainingError(f"--device {name}: not a device (use auto, cpu, cuda or cuda:N)") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise TrainingError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s)")
    if device.type == "mps":  # refused rather than half-working: no part of ganforge has been run on Apple GPUs
        raise TrainingError(f"--device {name}: Apple GPUs (MPS) are not supported: ganforge has not been tested on "
                            "them; use --device cpu")
    if device.type not in ("cpu", "cuda", "meta"):
        raise TrainingError(f"--device {name}: not supported (use auto, cpu, cuda or cuda:N)")
    return device


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak for `peak_memory`: CUDA's allocator statistics, or on a Linux CPU this
    process's peak resident set (elsewhere a CPU's peak is the process's whole life)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with contextlib.suppress(OSError):
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")  # resets VmHWM, the peak resident set


def peak_memory(device: torch.device) -> int | None:
    """Bytes at the peak since `reset_peak_memory`: the most tensors held on a GPU (max allocated), or
    the process's peak resident set on a CPU (RSS: everything, Python included); None where unknown."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def autocast_for(precision: str, device: torch.device):
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


def make_scalers(precision: str, device: torch.device) -> dict[str, torch.amp.GradScaler]:
    """One loss scaler per network (fp16 only): G's and D's overflows are their own, and each scale
    grows on its own network's steps."""
    return {net: torch.amp.GradScaler(device.type, enabled=precision == "fp16") for net in ("G", "D")}


def check_precision(model, precision: str) -> None:
    """fp16 is refused where a gradient penalty differentiates D twice: the gradients of gradients of
    an fp16 graph underflow unless every inner gradient is scaled and unscaled by hand; bf16 has
    fp32's range, needs no loss scaling and is as fast on GPUs that have fp16."""
    if precision == "fp16" and model.double_backward:
        raise TrainingError(f"--precision fp16: {model.name}'s gradient penalty differentiates "
                            f"{' and '.join(model.double_backward)} twice, which fp16 does not survive; "
                            "use --precision bf16 (or tf32/fp32)")


def set_tf32(on: bool) -> None:
    """TF32 for fp32 matmuls and convolutions, on or off, set for every run: the process-wide flags
    outlive a run, and cuDNN's default is on, which would make "fp32" TF32 convolutions. (For
    bf16/fp16 the flags govern only the ops autocast keeps in fp32.) The legacy flags: PyTorch 2.9+
    maps them onto its fp32_precision settings, and parts of PyTorch (the ONNX exporter) still read
    them, which fails once the new settings alone were used."""
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def tf32_state() -> dict[str, bool]:
    """Whether matmuls and convolutions in fp32 run as TF32 now (for tests and the GPU check's labels)."""
    return {"matmul": torch.backends.cuda.matmul.allow_tf32, "conv": torch.backends.cudnn.allow_tf32}


def compile_networks(model) -> list[str]:
    """torch.compile the forward of G and D, keeping the modules (and their snapshot keys) as they are.

    A network that a gradient penalty differentiates twice (model.double_backward) stays eager:
    compiled graphs do not support double backward. A network whose forward the compiler cannot
    handle falls back to eager on its first call, with a warning that gives the compiler's reason;
    running out of memory is raised as such (it is no compiler failure, and eager needs the memory too).
    """
    notes = []
    for name in ("G", "D"):
        if name in model.double_backward:
            notes.append(f"{name} stays eager: its gradient penalty needs double backward, which compile does not support")
            continue
        net = getattr(model, name)
        eager, compiled = net.forward, torch.compile(net.forward)

        def forward(*args, _net=net, _eager=eager, _compiled=compiled, _name=name, **kwargs):
            try:
                return _compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - sorted below: memory, or the compiler's own failure
                out_of_memory = caused_by(e, torch.OutOfMemoryError)
                if out_of_memory is not None:
                    raise out_of_memory from e
                warnings.warn(f"torch.compile could not compile {_name}, which runs eagerly from now on: "
                              f"{type(e).__name__}: {first_line(e)}", stacklevel=2)
                _net.forward = _eager
                return _eager(*args, **kwargs)

        net.forward = forward
        notes.append(f"{name} compiled")
    return notes


def caused_by(error: BaseException, kind: type) -> BaseException | None:
    """The first exception of `kind` in the error's chain of causes (the compiler wraps what it meets)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__ or getattr(error, "inner_exception", None) or error.__context__
    return None


def first_line(error: BaseException) -> str:
    return next((line for line in str(error).splitlines() if line.strip()), "")


def prepare_networks(model, precision: str, channels_last: bool, compile: bool) -> tuple:
    """The model set up for speed as asked: precision checked, TF32 on or off, NHWC layout,
    compiled forwards. Returns (model, notes for the log)."""
    check_precision(model, precision)
    set_tf32(precision == "tf32")
    notes = []
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        notes += compile_networks(model)
    return model, notes


def restore_generator(generator: torch.Generator, state: torch.Tensor, reseed: int) -> bool:
    """Put a saved random stream back; False, and the generator seeded with `reseed` instead, when
    the state was saved on another kind of device (a run moved from a CPU to a GPU or back: their
    generators' states are of different kinds and cannot be carried over)."""
    if state.numel() == generator.get_state().numel():
        try:
            generator.set_state(state)
            return True
        except RuntimeError:
            pass
    generator.manual_seed(reseed)
    return False

"""Using a trained generator: load it from a snapshot, sample images, export it standalone."""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import torch
from torch import nn
from torchvision.utils import save_image

from ganforge.data import to_uint8
from ganforge.errors import GanforgeError, OptionError, check_memory, require
from ganforge.models import build_model
from ganforge.models.base import CLASS, TEXT, Condition, GanModel
from ganforge.sampling import sample, sample_from_text
from ganforge.snapshots import SnapshotError, check_shapes, load_snapshot


def load_model(run_or_snapshot: str | Path, device: str | torch.device = "cpu") -> GanModel:
    """The model of a snapshot (all networks), in eval mode, on `device`."""
    snap = load_snapshot(run_or_snapshot)
    try:
        model = build_model(snap["model"], snap["model_config"])
        check_shapes(snap["state"], model.state_dict(), snap["path"])
        model.load_state_dict(snap["state"])
    except (KeyError, ValueError, RuntimeError) as e:
        raise SnapshotError(f"{snap['path']}: snapshot does not match the {snap.get('model')} networks ({e})") from e
    check_finite(model, snap["path"])
    return model.to(device).eval().requires_grad_(False)


def check_finite(model: GanModel, path: str) -> None:
    """Refuse weights holding NaN or Inf, naming the first such tensor: they would give black grids,
    NaN exports and null metrics with no error. Parameters and the generator's floating buffers
    are read (not every buffer: BEGAN's best measure starts at inf)."""
    buffers = [(f"G_ema.{name}", b) for name, b in model.G_ema.named_buffers() if b.is_floating_point()]
    for name, tensor in [*model.named_parameters(), *buffers]:
        if not bool(tensor.isfinite().all()):
            raise SnapshotError(f"{path}: tensor {name} holds NaN or Inf values; the snapshot cannot be used "
                                "(an earlier snapshot-*.pt of the run may be intact)")


class RuntimeGenerator(nn.Module):
    """Inference only: (noise, label) -> image in [-1, 1]; the EMA generator without the rest of the model."""

    def __init__(self, model: GanModel):
        super().__init__()
        self.G = model.G_ema
        self.options = model.sampling_options()  # fixed at export (PGGAN: the size and fade the run reached)
        self.conditional = model.conditioning == CLASS

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.G(z, labels if self.conditional else None, **self.options)


def run_class_names(run_or_snapshot: str | Path) -> list[str]:
    """The names of a run's classes (its class folders, classes.txt), read from its training data;
    [] when that data is no longer where the run found it (the classes are then numbers only)."""
    import json

    from ganforge.data import load_dataset
    from ganforge.snapshots import find_snapshot

    beside = find_snapshot(run_or_snapshot).parent / "training_options.json"
    try:
        options = (json.loads(beside.read_text(encoding="utf-8")) if beside.is_file()
                   else load_snapshot(run_or_snapshot)["options"])
        with warnings.catch_warnings():  # unreadable images are the run's business here
            warnings.simplefilter("ignore")
            return load_dataset(options["data"], options["resolution"], options.get("channels"),
                                options.get("center_crop", True), options.get("split", "train"),
                                preload=False).class_names
    except (GanforgeError, OSError, KeyError, ValueError):
        return []


def class_index(model: GanModel, given: str, names: list[str], option: str = "--label") -> int:
    """A class given by its number or its name (a class folder's: `names`); a wrong one is refused
    with the run's classes listed."""
    if given.isdigit() and int(given) < model.num_classes:
        return int(given)
    if given in names:
        return names.index(given)
    listed = ", ".join(f"{i} {n}" if n != str(i) else str(i) for i, n in enumerate(names[:30])) if names else \
        f"0..{model.num_classes - 1}"
    more = f" ... ({len(names)} in all)" if len(names) > 30 else ""
    wrong = "out of range" if given.isdigit() else "not a class of this run"
    raise OptionError(f"{option} {given}: {wrong}; the run's classes: {listed}{more}")


def class_condition(model: GanModel, n: int, label: int | None) -> tuple[Condition | None, int]:
    """The condition of n samples and the grid width: a fixed class, or one row per class (None:
    the model's own choice)."""
    if model.conditioning != CLASS:
        if label is not None:
            raise OptionError("--label: this model is not class-conditional (trained without labels)")
        return None, math.ceil(math.sqrt(n))
    if label is not None:
        if not 0 <= label < model.num_classes:
            raise OptionError(f"--label {label}: out of range, the model has classes 0..{model.num_classes - 1}")
        return Condition(classes=torch.full((n,), label, dtype=torch.long)), math.ceil(math.sqrt(n))
    return None, math.ceil(n / model.num_classes)


def generate(model: GanModel, n: int, seed: int = 0, label: int | None = None,
             device: str | torch.device = "cpu", psi: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """n images in [-1, 1] from the EMA generator, their class ids (None when not class-conditional),
    and a grid width; `psi` < 1 pulls the noise toward its mean (truncation)."""
    condition, columns = class_condition(model, n, label)
    r, c = model.sample_resolution, model.config["channels"]
    check_memory(n * c * r * r * 4 * 3, f"--n {n} images at {r}x{r}", "--n")  # batches, their concatenation, uint8
    images, condition = sample(model, n, seed, condition, device=device, desc="generating", psi=psi)
    return images, condition.classes, columns


def generate_from_prompts(model: GanModel, prompts: list[str], per_prompt: int, seed: int = 0,
                          device: str | torch.device = "cpu", truncate: bool = True, psi: float = 1.0) -> torch.Tensor:
    """Text-to-image: per_prompt images for each prompt (rows in prompt order), truncated noise by default."""
    if model.conditioning != TEXT:
        raise OptionError(f"--prompt: {model.name} is not a text-to-image model")
    prompts = [p.strip() for p in prompts if p.strip()]
    if not prompts:
        raise OptionError("--prompt: give at least one non-empty prompt")
    r, c = model.sample_resolution, model.config["channels"]
    check_memory(len(prompts) * per_prompt * c * r * r * 4 * 3, f"--n {per_prompt} images for each of "
                 f"{len(prompts):,} prompt(s) at {r}x{r}", "--n or the number of prompts")
    return sample_from_text(model, prompts, per_prompt, seed, device, truncate, psi)


GRID_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff")  # else --out is a folder


def class_rows(images: torch.Tensor, labels: torch.Tensor, columns: int) -> torch.Tensor:
    """Images laid out one row per class, each row filled to `columns` with blank (mid-grey) cells."""
    rows = []
    for c in labels.unique(sorted=True):
        row = images[labels == c]
        rows += [row, row.new_zeros(columns - len(row), *row.shape[1:])]
    return torch.cat(rows)


def check_scale(images: int, channels: int, resolution: int, scale: int) -> None:
    """Refuse a --scale whose enlarged images cannot fit in memory, before any is made."""
    if scale == 1:  # nothing enlarged: the images' own check speaks of what the user asked
        return
    side = resolution * scale
    check_memory(images * channels * side * side * 4 * 3, f"--scale {scale} ({images:,} images of {side}x{side})",
                 "--scale")


def enlarge(images: torch.Tensor, scale: int) -> torch.Tensor:
    """Images [N, C, H, W] enlarged `scale` times, each pixel a scale x scale block (nearest neighbour:
    small samples stay sharp instead of blurred)."""
    return images.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3) if scale > 1 else images


def captions_beside(grid: str | Path) -> Path:
    """The text file of a text-to-image grid's row captions: x.png -> x.txt."""
    return Path(grid).with_suffix(".txt")


def write_captions(grid: str | Path, captions: list[str]) -> None:
    """The captions of a grid's rows beside it, one line per row in order (a caption's own line
    breaks become spaces, so line k stays row k)."""
    captions_beside(grid).write_text("".join(" ".join(c.splitlines()) + "\n" for c in captions), encoding="utf-8")


def write_images(images: torch.Tensor, out: str | Path, columns: int, labels: torch.Tensor | None = None,
                 captions: list[str] | None = None) -> list[Path]:
    """A grid when `out` names a .png/.jpg file (one row per class when `labels` are given; with
    `captions`, those of its rows written beside it), otherwise one PNG per image in the folder `out`."""
    out = Path(out)
    if out.suffix.lower() in GRID_SUFFIXES:
        out.parent.mkdir(parents=True, exist_ok=True)
        grid = class_rows(images, labels, columns) if labels is not None else images
        try:
            save_image(grid, out, nrow=columns, normalize=True, value_range=(-1, 1), padding=1)
        except OSError as e:  # a full disk: no torn image left behind; the message names the file
            out.unlink(missing_ok=True)
            raise OSError(e.errno, e.strerror, str(out)) from e
        if captions:
            write_captions(out, captions)
        return [out]
    out.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    paths = []
    for i, img in enumerate(to_uint8(images)):
        arr = img.permute(1, 2, 0).numpy()
        paths.append(out / f"{i:06d}.png")
        Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(paths[-1])
    return paths


def export(model: GanModel, fmt: str, out: str | Path) -> list[Path]:
    """Write the RuntimeGenerator as ONNX or TorchScript; inputs z [N, z_dim] float32 (and labels [N] int64).

    Returns every file written. ONNX weights are kept inside the one .onnx file when they fit under
    protobuf's 2 GB limit (every generator here does), so the file can be copied alone."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if model.conditioning == TEXT:
        raise OptionError("--format: exporting a text-to-image generator is not supported yet (its text "
                         "encoder is a separate network); use ganforge generate --prompt")
    runtime = RuntimeGenerator(model).eval().cpu()
    inline = sum(p.numel() * p.element_size() for p in runtime.parameters()) < 2**31 - 2**26
    z = torch.randn(2, model.z_dim)
    args = (z, torch.zeros(2, dtype=torch.long)) if runtime.conditional else (z,)
    if fmt == "torchscript":
        with warnings.catch_warnings():  # TorchScript is deprecated upstream but still the portable C++/Python format
            warnings.simplefilter("ignore", FutureWarning)
            scripted = io.BytesIO()  # torch's own file writer aborts the process on a full disk
            torch.jit.save(torch.jit.trace(runtime, args, check_trace=False), scripted)
        try:
            out.write_bytes(scripted.getvalue())
        except OSError as e:  # no torn file left behind; the message names the file
            out.unlink(missing_ok=True)
            raise OSError(e.errno, e.strerror, str(out)) from e
    elif fmt == "onnx":
        require("onnx,onnxscript", "export", "--format onnx")
        batch = torch.export.Dim("batch")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the exporter's notes on naming the shared batch axis
            torch.onnx.export(runtime, args, str(out), dynamo=True, verbose=False, input_names=["z", "labels"][:len(args)],
                              output_names=["images"], dynamic_shapes=tuple({0: batch} for _ in args),
                              external_data=not inline)
    else:
        raise OptionError(f"--format {fmt}: choose onnx or torchscript")
    data = out.with_name(out.name + ".data")  # ONNX external weights, written only beyond 2 GB
    return [out] + ([data] if fmt == "onnx" and not inline and data.exists() else [])

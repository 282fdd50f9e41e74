"""Using a trained generator: load it from a snapshot, sample images, export it standalone."""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torchvision.utils import save_image

from ganforge.data import to_uint8
from ganforge.errors import GanforgeError, OptionError, check_memory, require
from ganforge.models import build_model
from ganforge.models.base import CLASS, TEXT, Condition, GanModel
from ganforge.sampling import sample, sample_from_text, truncation
from ganforge.snapshots import SnapshotError, check_shapes, find_snapshot, load_snapshot


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


def run_options(run_or_snapshot: str | Path) -> dict:
    """A run's options: its training_options.json where the snapshot is in its run (a small file),
    else those the snapshot carries."""
    import json

    from ganforge.snapshots import find_snapshot

    beside = find_snapshot(run_or_snapshot).parent / "training_options.json"
    if beside.is_file():
        return json.loads(beside.read_text(encoding="utf-8"))
    return load_snapshot(run_or_snapshot)["options"]


def run_class_names(run_or_snapshot: str | Path) -> list[str]:
    """The names of a run's classes (its class folders, classes.txt), read from its training data;
    [] when that data is no longer where the run found it (the classes are then numbers only)."""
    from ganforge.data import load_dataset

    try:
        options = run_options(run_or_snapshot)
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


def class_of(model: GanModel, run_or_snapshot: str | Path, given: str, option: str = "--label") -> int:
    """A class given by number or by name (a class folder's), as generate, interpolate and project take it."""
    names = [] if given.isdigit() and int(given) < model.num_classes else run_class_names(run_or_snapshot)
    return class_index(model, given, names, option)


def class_name(run_or_snapshot: str | Path, index: int, names: list[str] | None = None) -> str:
    """A class's number, with its name where the run's data gives one: "3 (cat)". `names`: the
    run's class names when already read (run_class_names)."""
    names = run_class_names(run_or_snapshot) if names is None else names
    return f"{index} ({names[index]})" if index < len(names) and names[index] != str(index) else str(index)


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


@dataclass
class Samples:
    """The images of one request (`ganforge generate`, `Generator.sample`) and how a grid lays them out."""

    images: torch.Tensor                 # [N, C, H, W] float in [-1, 1], on the CPU
    columns: int                         # the grid's width
    labels: torch.Tensor | None = None   # the class of each image, when the grid has one row per class
    captions: list[str] | None = None    # text-to-image: the prompt of each grid row
    label: int | None = None             # the class of every image, when one class was asked for


class Generator(RuntimeGenerator):
    """A run's EMA generator for use from Python: (noise, label) -> images in [-1, 1], and seeded samples.

    As a module it holds G's EMA weights alone (the discriminator, the training generator and the
    optimizers are dropped when it is loaded), so it can be moved with .to(), compiled or exported.
    Sampling keeps no state between calls (each call seeds its own torch.Generator): threads may
    share one Generator.
    """

    def __init__(self, model: GanModel, source: Path):
        super().__init__(model)
        model.G, model.D = None, None  # what sampling never reads: freed, and out of this module's weights
        self.__dict__["model"] = model  # outside the module tree: its G_ema is self.G, the rest is settings
        self.source = source  # the snapshot file the weights came from
        self.conditioning, self.num_classes = model.conditioning, model.num_classes
        self.z_dim, self.channels, self.resolution = model.z_dim, model.config["channels"], model.sample_resolution

    @classmethod
    def load(cls, run_or_snapshot: str | Path, device: str | torch.device = "cpu") -> "Generator":
        """The EMA generator of a run directory (its latest snapshot) or of a snapshot file, on `device`."""
        return cls(load_model(run_or_snapshot, device), find_snapshot(run_or_snapshot))

    @property
    def device(self) -> torch.device:
        """Where the weights are (where `noise` puts the noise)."""
        return next(self.G.parameters()).device

    def forward(self, z: torch.Tensor, labels: torch.Tensor | Sequence[str] | None = None) -> torch.Tensor:
        """Images in [-1, 1] from noise z [N, z_dim] and, by the run's conditioning, class ids [N] (int64)
        or, for a text-to-image run, N prompts, one prompt for all, or their sentence vectors [N, text_dim]."""
        if self.conditioning == TEXT:
            if labels is None:
                raise OptionError("this is a text-to-image run: give --prompt TEXT (or --prompts FILE)")
            if isinstance(labels, str):  # one prompt for every noise row
                labels = [labels] * len(z)
            vectors = labels if isinstance(labels, torch.Tensor) else self.model.encode_text(list(labels))
            return self.G(z, vectors.to(z.device))
        return super().forward(z, labels)

    def noise(self, n: int, seed: int = 0, psi: float = 1.0, truncate: bool = True) -> torch.Tensor:
        """The noise [n, z_dim] that `sample(n, seed=seed, psi=psi)` draws, on the generator's device."""
        g = torch.Generator().manual_seed(seed)
        return (self.model.sampling_latents(n, generator=g, truncate=truncate) * truncation(psi)).to(self.device)

    def draw(self, n: int, seed: int = 0, label: int | str | None = None, prompts: Sequence[str] = (),
             psi: float = 1.0, truncate: bool = True) -> Samples:
        """What `ganforge generate` draws: n images of a class (by number or name; None: the classes in
        turn, one grid row each), or n for each prompt of a text-to-image run; `psi` < 1 truncates the
        noise, `truncate` is the text models' own truncated noise. A request the run cannot answer is
        refused with an OptionError naming the option."""
        if n < 1:  # worded as the command's --n is refused
            raise OptionError(f"Invalid value for '--n': {n} is not in the range x>=1.")
        model, device = self.model, self.device
        if prompts or model.conditioning == TEXT:
            if model.conditioning == TEXT and label is not None:
                raise OptionError("--label: a text-to-image run is conditioned on --prompt, not on a class")
            if not prompts:
                raise OptionError("this is a text-to-image run: give --prompt TEXT (or --prompts FILE)")
            images = generate_from_prompts(model, list(prompts), n, seed=seed, device=device, truncate=truncate, psi=psi)
            return Samples(images, n, captions=[p.strip() for p in prompts if p.strip()])
        if label is not None and model.num_classes:
            label = class_of(model, self.source, str(label), "--label")
        images, labels, columns = generate(model, n, seed=seed, label=label, device=device, psi=psi)
        return Samples(images, columns, labels if label is None else None, label=label)

    def sample(self, n: int, seed: int = 0, label: int | str | None = None, prompt: str | Sequence[str] | None = None,
               psi: float = 1.0, truncate: bool = True) -> torch.Tensor:
        """n images [n, C, H, W] in [-1, 1] (float, on the CPU), the same as `ganforge generate` gives for
        the same seed: of class `label` (a number or a class folder's name; None: the classes in turn),
        or, for a text-to-image run, of `prompt` (a list of prompts: n for each, in order)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt or ())
        return self.draw(n, seed, label, prompts, psi, truncate).images

    def sample_images(self, n: int, seed: int = 0, label: int | str | None = None,
                      prompt: str | Sequence[str] | None = None, psi: float = 1.0, truncate: bool = True) -> list:
        """`sample` as PIL images, the pixels `ganforge generate --out FOLDER` writes."""
        from PIL import Image

        arrays = to_uint8(self.sample(n, seed, label, prompt, psi, truncate)).permute(0, 2, 3, 1).numpy()
        return [Image.fromarray(a[..., 0] if a.shape[2] == 1 else a) for a in arrays]

    def extra_repr(self) -> str:
        return (f"source={self.source}, resolution={self.resolution}, channels={self.channels}, "
                f"conditioning={self.conditioning!r}" + (f", num_classes={self.num_classes}" if self.num_classes else ""))


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
    if scale == 1:  # nothing is enlarged: the images' own memory is checked where they are made, naming --n
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

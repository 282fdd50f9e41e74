"""Seeing what a run learned: latent walks (`ganforge interpolate`) and the training timelapse
(`ganforge timelapse`), written as MP4 or GIF.

MP4 goes through imageio with imageio-ffmpeg, whose ffmpeg binary ships inside its wheel (the
[video] extra); GIF through Pillow, which the core has. A walk loops: it passes through the latent of
each seed in turn and comes back to the first, so the video repeats without a jump.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.utils import make_grid

from ganforge.data import to_uint8
from ganforge.errors import OptionError, require
from ganforge.models.base import TEXT, Condition, GanModel
from ganforge.sampling import in_chunks

VIDEO_SUFFIXES = (".mp4", ".gif")


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation: the angle between a and b moves linearly, so a Gaussian latent keeps
    a typical length all the way (a straight line between two would pass through shorter, atypical
    vectors, which PGGAN's pixel norm then rescales)."""
    cos = (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.arccos(cos)
    if float(omega.abs().max()) < 1e-4:  # (nearly) the same direction: the straight line is the arc
        return torch.lerp(a, b, t)
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


def walk_latents(model: GanModel, seeds: list[int], frames: int) -> torch.Tensor:
    """[frames, z_dim]: a loop through the latents of the seeds (each seed's own sample latent), eased
    in and out of every keyframe; frame 0 is the first seed's latent, and the frame after the last
    would be it again."""
    keys = [model.sampling_latents(1, generator=torch.Generator().manual_seed(s))[0] for s in seeds]
    blend = slerp if model.latent_interpolation == "slerp" else torch.lerp
    out = []
    for f in range(frames):
        position = f * len(keys) / frames
        i, t = int(position), position - int(position)
        t = t * t * (3 - 2 * t)  # smoothstep: the walk slows at each seed's image
        out.append(blend(keys[i], keys[(i + 1) % len(keys)], t))
    return torch.stack(out)


def walk_frames(model: GanModel, seeds: list[int], seconds: float, fps: int, grid: int = 1,
                label: int | None = None, prompt: str | None = None, device: str | torch.device = "cpu") -> np.ndarray:
    """uint8 frames [F, H, W, C] of grid x grid walks side by side (walk k uses the seeds + 1000 k)."""
    frames = max(2, round(seconds * fps))
    walks = [walk_latents(model, [s + 1000 * k for s in seeds], frames) for k in range(grid * grid)]
    z = torch.stack(walks, dim=1).flatten(0, 1)  # frame-major: the cells of frame 0, then of frame 1, ...
    generate = walk_generator(model, len(z), label, prompt)
    images = in_chunks(len(z), lambda i, j: generate(z[i:j].to(device), i, j), desc="walk frames")
    images = to_uint8(images).view(frames, grid * grid, *images.shape[1:])
    return np.stack([as_frame(make_grid(cells, nrow=grid, padding=0 if grid == 1 else 2)) for cells in images])


def walk_generator(model: GanModel, n: int, label: int | None, prompt: str | None):
    """(z, start, stop) -> images, with the walk's fixed condition: a class, a prompt, or the model's own."""
    if model.conditioning == TEXT:
        if not prompt or not prompt.strip():
            raise OptionError("--prompt: a text-to-image run walks under one prompt; give --prompt TEXT")
        return lambda z, i, j: model.generate_from_text([prompt.strip()] * len(z), z)
    if prompt:
        raise OptionError(f"--prompt: {model.name} is not a text-to-image model")
    if label is not None and not model.num_classes:
        raise OptionError("--label: this model is not class-conditional (trained without labels)")
    if model.num_classes:
        label = 0 if label is None else label
        if not 0 <= label < model.num_classes:
            raise OptionError(f"--label {label}: out of range, the model has classes 0..{model.num_classes - 1}")
    condition = Condition(classes=torch.full((n,), label, dtype=torch.long)) if label is not None else Condition()
    return lambda z, i, j: model.generate(z, condition[i:j].to(z.device))


def as_frame(image: torch.Tensor) -> np.ndarray:
    """[C, H, W] uint8 -> [H, W, 3]."""
    array = image.permute(1, 2, 0).numpy()
    return np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array


def timelapse_frames(run_dir: str | Path) -> tuple[np.ndarray, list[str]]:
    """The run's sample grids (fakes<kimg>.png) in training order, each upscaled to the largest
    (nearest neighbour: early small PGGAN grids show their pixels), with its kimg written below."""
    from PIL import Image, ImageDraw

    paths = sorted(Path(run_dir).glob("fakes*.png"))  # the kimg labels sort in training order
    if not paths:
        raise OptionError(f"{run_dir}: no sample grids (fakes*.png) in this run directory yet")
    grids = [Image.open(p).convert("RGB") for p in paths]
    size = max(g.size[0] for g in grids)
    labels, frames = [], []
    for path, grid in zip(paths, grids):
        kimg = kimg_of(path.stem[len("fakes"):])
        labels.append(f"{kimg:g} kimg")
        canvas = Image.new("RGB", (size, size + 16), "black")
        canvas.paste(grid.resize((size, round(grid.size[1] * size / grid.size[0])), Image.NEAREST), (0, 0))
        ImageDraw.Draw(canvas).text((4, size + 2), labels[-1], fill="white")
        frames.append(np.asarray(canvas))
    return np.stack(frames), labels


def kimg_of(label: str) -> float:
    """'000025' -> 25, '000001k500' -> 1.5 (ganforge's kimg labels in file names)."""
    match = re.fullmatch(r"(\d+)(?:k(\d{3}))?", label)
    return int(match[1]) + (int(match[2]) / 1000 if match[2] else 0.0) if match else math.nan


def write_video(frames: np.ndarray, out: str | Path, fps: int) -> Path:
    """MP4 (H.264 through imageio-ffmpeg; small frames are upscaled so the codec keeps detail) or GIF."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise OptionError(f"--out {out}: give a .mp4 or .gif file")
    if suffix == ".gif":
        from PIL import Image

        images = [Image.fromarray(f) for f in frames]
        images[0].save(out, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
        return out
    require("imageio,imageio_ffmpeg", "video", "--out .mp4", "; or write a .gif")
    import imageio.v2 as imageio

    scale = max(1, math.ceil(256 / min(frames.shape[1:3])))
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    pad_h, pad_w = -frames.shape[1] % 16, -frames.shape[2] % 16  # H.264 works in 16 x 16 blocks
    frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    imageio.mimwrite(out, list(frames), fps=fps, codec="libx264", quality=8, macro_block_size=1)
    return out

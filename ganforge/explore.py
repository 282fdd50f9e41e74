"""Seeing what a run learned: latent walks (`ganforge interpolate`) and the training timelapse
(`ganforge timelapse`), written as MP4 or GIF.

MP4 goes through imageio with imageio-ffmpeg, whose ffmpeg binary ships inside its wheel (the
[video] extra); GIF through Pillow, which the core has. A walk loops: it passes through the latent of
each seed in turn and comes back to the first, so the video repeats without a jump.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.utils import make_grid

from ganforge.data import to_uint8
from ganforge.errors import OptionError, check_memory, require
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


def walk_steps(keys: int, frames: int) -> list[tuple[int, int, float]]:
    """(keyframe, next keyframe, t) of each frame of a loop through `keys` keyframes, eased in and
    out of each (smoothstep: the walk slows at every keyframe's image); frame 0 is keyframe 0."""
    steps = []
    for f in range(frames):
        position = f * keys / frames
        i, t = int(position), position - int(position)
        steps.append((i, (i + 1) % keys, t * t * (3 - 2 * t)))
    return steps


def walk_latents(model: GanModel, seeds: list[int], frames: int, keys: int | None = None) -> torch.Tensor:
    """[frames, z_dim]: a loop through the latents of the seeds (each seed's own sample latent), over
    `keys` keyframes (the seeds in turn, repeated; default one per seed); the frame after the last
    would be the first again."""
    keys = keys or len(seeds)
    return latents_along(model, seeds, walk_steps(keys, frames), keys)


def latents_along(model: GanModel, seeds: list[int], steps: list[tuple[int, int, float]], keys: int,
                  given: list[torch.Tensor] | None = None) -> torch.Tensor:
    """[len(steps), z_dim]: the latent at each (keyframe, next keyframe, t) of a walk whose keyframe k
    is the sample latent of seed k, or the k-th of the `given` latents (repeated to `keys` keyframes)."""
    if given:
        latents = [given[k % len(given)] for k in range(keys)]
    else:
        latents = [model.sampling_latents(1, generator=torch.Generator().manual_seed(seeds[k % len(seeds)]))[0]
                   for k in range(keys)]
    blend = slerp if model.latent_interpolation == "slerp" else torch.lerp
    return torch.stack([blend(latents[i], latents[j], t) for i, j, t in steps])


def walk_frames(model: GanModel, seeds: list[int], seconds: float, fps: int, grid: int = 1,
                labels: list[int] | None = None, prompts: list[str] | None = None,
                device: str | torch.device = "cpu", scale: int = 1,
                latents: list[torch.Tensor] | None = None) -> np.ndarray:
    """uint8 frames [F, H, W, C] of grid x grid walks side by side (walk k uses the seeds + 1000 k).
    Keyframe k is seed k and label (or prompt) k, each list repeated to the longer; between two
    labels or prompts the class embedding or sentence vector moves linearly along with the latent.
    `scale`: each frame enlarged that many times, nearest neighbour. `latents` (read_latent's, one
    walk: grid 1) are the keyframes' latents instead of the seeds'."""
    conditions = walk_conditions(model, labels, prompts)
    keys = max(len(latents or seeds), len(conditions))
    frames = max(2, round(seconds * fps))
    r, cells = model.sample_resolution, grid * grid
    side = (grid * r + (2 * (grid + 1) if grid > 1 else 0)) * scale
    # Before any frame is made: the samples as floats, the frames (and their enlarged copy), and
    # their copy upscaled for the video.
    check_memory(frames * (cells * model.config["channels"] * r * r * 4 + 2 * side * side * 3
                           + 2 * 3 * max(side, 256) ** 2),
                 f"--seconds {seconds:g} at --fps {fps} ({frames:,} frames of {side}x{side})",
                 "--seconds, --fps or --scale")
    steps = walk_steps(keys, frames)
    walk = walk_images(model, seeds, steps, keys, conditions, grid, labels, prompts, device, latents)
    return walk.repeat(scale, axis=1).repeat(scale, axis=2) if scale > 1 else walk


def blend_frame(model: GanModel, seeds: tuple[int, int], t: float, grid: int = 1,
                labels: list[int] | None = None, prompts: list[str] | None = None,
                device: str | torch.device = "cpu") -> np.ndarray:
    """One uint8 frame [H, W, C] of the walk from the first keyframe (seed, label or prompt) to the
    second, the fraction t of the way (t = 0 and 1 are the keyframes' own samples)."""
    conditions = walk_conditions(model, labels, prompts)
    keys = max(len(seeds), len(conditions))
    return walk_images(model, list(seeds), [(0, 1 % keys, t)], keys, conditions, grid, labels, prompts, device)[0]


def walk_images(model: GanModel, seeds: list[int], steps: list[tuple[int, int, float]], keys: int,
                conditions: list[torch.Tensor], grid: int, labels: list[int] | None, prompts: list[str] | None,
                device: str | torch.device, latents: list[torch.Tensor] | None = None) -> np.ndarray:
    """uint8 frames [len(steps), H, W, C]: at each step of the walk, grid x grid cells (cell k walks
    the seeds + 1000 k, or the given latents) under the condition of that step."""
    walks = [latents_along(model, [s + 1000 * k for s in seeds], steps, keys, latents) for k in range(grid * grid)]
    z = torch.stack(walks, dim=1).flatten(0, 1)  # frame-major: the cells of frame 0, then of frame 1, ...
    per_frame = torch.stack([torch.lerp(conditions[i % len(conditions)], conditions[j % len(conditions)], t)
                             for i, j, t in steps]) if len(conditions) > 1 else None
    if per_frame is not None:
        per_frame = per_frame.repeat_interleave(grid * grid, dim=0)
    generate = walk_generator(model, labels, prompts, conditions, per_frame)
    images = in_chunks(len(z), lambda i, j: generate(z[i:j].to(device), i, j), desc="walk frames" if len(steps) > 1 else None)
    images = to_uint8(images).view(len(steps), grid * grid, *images.shape[1:])
    return np.stack([as_frame(make_grid(cells, nrow=grid, padding=0 if grid == 1 else 2)) for cells in images])


def read_latent(path: str | Path, model: GanModel) -> torch.Tensor:
    """A latent saved by `ganforge project` (latent.npy, [1, z_dim]; a bare [z_dim] is taken too) as [z_dim]."""
    try:
        latent = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise OptionError(f"--latent {path}: not a latent saved by ganforge project (a .npy file): {e}") from None
    if latent.shape not in ((1, model.z_dim), (model.z_dim,)) or latent.dtype.kind != "f":
        raise OptionError(f"--latent {path}: its latent has shape {tuple(latent.shape)} ({latent.dtype}); this run's "
                          f"generator takes (1, {model.z_dim}) floats, as ganforge project writes them")
    return torch.from_numpy(latent.astype(np.float32)).reshape(model.z_dim)


PROJECTION_RECORD = "result.json"  # what `ganforge project` writes beside latent.npy: its figures and its run


def latent_of_another_run(path: str | Path, run_id: str | None, run: str | Path) -> str | None:
    """A line saying that the latent at `path` was projected with another run than `run` (as the
    result.json `project` wrote beside it records), else None: the shape of a latent fits any run
    with the same z size, but its image is that of the run it was found in."""
    import json

    record = Path(path).with_name(PROJECTION_RECORD)
    try:
        projected = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no record beside it (a latent of one's own): nothing to compare
        return None
    if not isinstance(projected, dict) or projected.get("run_id") in (None, run_id):
        return None
    return (f"--latent {path}: projected with run {projected.get('run', '?')} (run_id {projected['run_id']}, in "
            f"{record}), not {run} (run_id {run_id}): its keyframe is not the image it was projected from")


def walk_conditions(model: GanModel, labels: list[int] | None, prompts: list[str] | None) -> list[torch.Tensor]:
    """The keyframes' conditions as vectors that blend: class weights (one-hot), or sentence vectors."""
    if model.conditioning == TEXT:
        prompts = [p.strip() for p in prompts or []]
        if not prompts or not all(prompts):
            raise OptionError("--prompt: a text-to-image run walks under one or more prompts; give --prompt TEXT")
        return list(model.encode_text(prompts))
    if prompts:
        raise OptionError(f"--prompt: {model.name} is not a text-to-image model")
    if labels and not model.num_classes:
        raise OptionError("--labels: this model is not class-conditional (trained without labels)")
    if not model.num_classes:
        return []
    labels = labels or [0]
    bad = [c for c in labels if not 0 <= c < model.num_classes]
    if bad:
        raise OptionError(f"--labels {bad[0]}: out of range, the model has classes 0..{model.num_classes - 1}")
    return list(F.one_hot(torch.tensor(labels), model.num_classes).float())


def walk_generator(model: GanModel, labels: list[int] | None, prompts: list[str] | None,
                   conditions: list[torch.Tensor], per_frame: torch.Tensor | None):
    """(z, start, stop) -> images of those cells of the walk, under their condition: fixed (one label
    or prompt, or the model's own) or moving with the frames (per_frame: one vector a cell)."""
    if model.conditioning == TEXT:
        vectors = per_frame if per_frame is not None else conditions[0].expand(1, -1)
        return lambda z, i, j: model.generate_from_vectors(
            vectors[i:j] if per_frame is not None else vectors.expand(len(z), -1), z)
    if not model.num_classes:
        return lambda z, i, j: model.generate(z, Condition())
    if per_frame is not None:
        return lambda z, i, j: model.generate(z, Condition(classes=per_frame[i:j].to(z.device)))
    label = (labels or [0])[0]
    return lambda z, i, j: model.generate(z, Condition(classes=torch.full((len(z),), label, dtype=torch.long,
                                                                          device=z.device)))


def as_frame(image: torch.Tensor) -> np.ndarray:
    """[C, H, W] uint8 -> [H, W, 3]."""
    array = image.permute(1, 2, 0).numpy()
    return np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array


def timelapse_frames(run_dir: str | Path) -> tuple[np.ndarray, list[str]]:
    """The run's sample grids (fakes<kimg>.png) in training order, each upscaled to the largest
    (nearest neighbour: early small PGGAN grids show their pixels), with its kimg written below."""
    from PIL import Image, ImageDraw

    from ganforge.data import open_image

    paths, sizes = [], []
    for path in sorted(Path(run_dir).glob("fakes*.png")):  # the kimg labels sort in training order
        try:  # headers first: what the frames will take is known before any grid is decoded
            with open_image(path) as img:
                sizes.append(img.size)
            paths.append(path)
        except Image.DecompressionBombError as e:
            raise OptionError(f"{path}: refused, {e}") from None
        except (OSError, ValueError) as e:  # torn by a kill or a full disk
            warnings.warn(f"skipping the unreadable grid {path}: {e}", stacklevel=2)
    if not paths:
        raise OptionError(f"{run_dir}: no readable sample grids (fakes*.png) in this run directory yet")
    size = max(w for w, _ in sizes)
    check_memory(len(paths) * (size * size * 3 + size * (size + 16) * 3 * 2 + 2 * 3 * max(size, 256) ** 2),
                 f"the timelapse of {len(paths):,} grids of up to {size}x{size}", "the number of fakes*.png grids")
    readable, grids = [], []
    for path in paths:
        try:
            with Image.open(path) as grid:
                grids.append(grid.convert("RGB"))
            readable.append(path)
        except (OSError, ValueError) as e:  # a header that reads over pixels that do not
            warnings.warn(f"skipping the unreadable grid {path}: {e}", stacklevel=2)
    if not readable:
        raise OptionError(f"{run_dir}: no readable sample grids (fakes*.png) in this run directory yet")
    paths = readable
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


def check_video_writer(out: str | Path, needed_for: str = "--out .mp4", alternative: str = "; or write a .gif") -> None:
    """Stop now, before the frames are made, when `out` is an MP4 and the [video] extra is missing
    (a projection or a long walk would otherwise run to the end and then fail)."""
    if Path(out).suffix.lower() == ".mp4":
        require("imageio,imageio_ffmpeg", "video", needed_for, alternative)


def write_video(frames: np.ndarray, out: str | Path, fps: int) -> tuple[int, int]:
    """MP4 (H.264 through imageio-ffmpeg; small frames are upscaled so the codec keeps detail, and
    padded to its 16 x 16 blocks) or GIF. Returns the (width, height) of the frames as written."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise OptionError(f"--out {out}: give a .mp4 or .gif file")
    if suffix == ".gif":
        from PIL import Image

        images = [Image.fromarray(f) for f in frames]
        images[0].save(out, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
        return frames.shape[2], frames.shape[1]
    require("imageio,imageio_ffmpeg", "video", "--out .mp4", "; or write a .gif")
    import imageio.v2 as imageio

    scale = max(1, math.ceil(256 / min(frames.shape[1:3])))
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    pad_h, pad_w = -frames.shape[1] % 16, -frames.shape[2] % 16  # H.264 works in 16 x 16 blocks
    frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    try:
        imageio.mimwrite(out, list(frames), fps=fps, codec="libx264", quality=8, macro_block_size=1)
    except (OSError, RuntimeError) as e:  # ffmpeg missing, broken or refused (IMAGEIO_FFMPEG_EXE), or the disk
        out.unlink(missing_ok=True)        # whatever it wrote is not a video
        said = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise OptionError(f"--out {out}: ffmpeg could not write the video ({said.strip()[:200]}); "
                          "write a .gif instead, or check the ffmpeg in use (IMAGEIO_FFMPEG_EXE)") from e
    return frames.shape[2], frames.shape[1]


# --- projection: the latent of a real image -------------------------------------------------------
def read_image(path: str | Path, channels: int, resolution: int) -> torch.Tensor:
    """One image file as the model sees its data: [1, C, R, R] in [-1, 1], centre-cropped and resized.
    Anything that is not a readable image, or decodes to more pixels than ganforge accepts (a
    decompression bomb), is refused naming the file."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    from ganforge.data import fit_square, to_float, to_tensor

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                pixels = to_tensor(img, channels)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise OptionError(f"--image {path}: refused, it would decode to too many pixels ({e})") from None
    except FileNotFoundError:
        raise OptionError(f"--image {path}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise OptionError(f"--image {path}: not a readable image ({e})") from None
    return to_float(fit_square(pixels, resolution, center_crop=True)[None])


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of each pair of images in [-1, 1] (peak-to-peak 2)."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp(min=1e-10))


def projection_loss(images: torch.Tensor, target: torch.Tensor, structure_weight: float = 1.0) -> torch.Tensor:
    """Pixel (squared error) plus structural (1 - MS-SSIM) distance of each image to the target.

    The structural term stands in for stylegan2-ada's LPIPS: LPIPS needs VGG weights, which are not
    in any wheel ganforge may use offline, while MS-SSIM needs none and is a perceptual measure of
    its own (the L1 + MS-SSIM mix of Zhao et al. 2017, "Loss functions for image restoration")."""
    from ganforge.metrics.msssim import ms_ssim

    pixel = (images - target).pow(2).flatten(1).mean(1)
    structure = 1 - ms_ssim((images + 1) * 127.5, (target + 1) * 127.5, floor=1e-4)
    return pixel + structure_weight * structure


def closest_class(model: GanModel, target: torch.Tensor, seed: int = 0, start_candidates: int = 64) -> int:
    """The class under which the model comes closest to the target: every class is tried from the
    same `start_candidates` latents `project` starts from, and the class of the best start is kept."""
    from ganforge.models.base import Condition

    best = []
    with torch.no_grad():
        for c in range(model.num_classes):
            z = model.sampling_latents(start_candidates, generator=torch.Generator().manual_seed(seed)).to(target.device)
            classes = torch.full((len(z),), c, dtype=torch.long, device=target.device)
            images = torch.cat([model.generate(part, Condition(classes=classes[:len(part)])) for part in z.split(16)])
            best.append(projection_loss(images, target.expand(len(images), -1, -1, -1)).min())
    return int(torch.stack(best).argmin())


def project(model: GanModel, target: torch.Tensor, condition: Callable[[torch.Tensor], torch.Tensor],
            steps: int = 1000, seed: int = 0, start_candidates: int = 64, frames: int = 60,
            lr: float = 0.05) -> dict:
    """The latent whose image (under `condition`: z -> image) best matches the target [1, C, H, W].

    Starts from the model's encoder where it has one (BEGAN), else from the best of
    `start_candidates` latents of `seed`; then Adam on the latent with a short warm-up and a cosine
    decay, and early on a little noise added to it so it can leave a poor basin (as stylegan2-ada's
    projector does). Returns the latent, the image, the loss per step, the start used, and about
    `frames` snapshots of the image along the way (for the video)."""
    generator = torch.Generator().manual_seed(seed)
    device = target.device
    with torch.no_grad():
        encoded = model.encode(target)
        if encoded is not None:
            z, start = encoded.to(device), "the model's encoder"
        else:
            candidates = model.sampling_latents(start_candidates, generator=generator).to(device)
            losses = torch.cat([projection_loss(condition(c), target.expand(len(c), -1, -1, -1))
                                for c in candidates.split(16)])
            z, start = candidates[losses.argmin()][None], f"the best of {start_candidates} samples"
    bounded = model.latent_interpolation == "lerp"  # a uniform latent cube: stay inside it
    z = z.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=lr, betas=(0.9, 0.999))
    history, snapshots = [], []
    every = max(1, steps // frames)
    for step in range(steps):
        t = step / steps
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, t / 0.05) * (0.5 - 0.5 * math.cos(math.pi * min(1.0, (1 - t) / 0.25)))
        noise = 0.05 * max(0.0, 1 - t / 0.75) ** 2
        z_noisy = z + noise * torch.randn(z.shape, generator=generator).to(device)
        image = condition(z_noisy)
        loss = projection_loss(image, target).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if bounded:
            with torch.no_grad():
                z.clamp_(-1, 1)
        history.append(loss.item())
        if step % every == 0:
            snapshots.append(image.detach().clamp(-1, 1).cpu()[0])
    with torch.no_grad():
        image = condition(z).clamp(-1, 1)
    snapshots.append(image.cpu()[0])
    return {"latent": z.detach().cpu(), "image": image.cpu(), "losses": history, "start": start,
            "frames": torch.stack(snapshots)}


@dataclass
class Projection:
    """What projecting a real image found: the latent, its image, how close it came and how it got there."""

    latent: torch.Tensor     # [1, z_dim]: the latent found (np.save'd as latent.npy by ganforge project)
    image: torch.Tensor      # [1, C, H, W] in [-1, 1]: the generator's image of the latent
    target: torch.Tensor     # [1, C, H, W] in [-1, 1]: the real image at the generator's size and channels
    loss: float              # the last step's loss
    losses: list[float]      # the loss of each step
    start: str               # where the search began (the model's encoder, or the best of the seed's samples)
    label: int | None        # the class it was projected under (class-conditional runs)
    prompt: str | None       # the caption it was projected under (text-to-image runs)
    psnr_db: float           # image against target
    ms_ssim: float
    frames: torch.Tensor     # [F, C, H, W]: the image along the way, for the video


def project_image(model: GanModel, run_or_snapshot: str | Path, target: torch.Tensor, label: int | str | None = None,
                  prompt: str | None = None, steps: int = 1000, seed: int = 0,
                  report: Callable[[str], None] | None = None) -> Projection:
    """What `ganforge project` finds: the latent whose image under the run's condition (`label`, by
    number or name: None tries every class and keeps the closest, said to `report`; `prompt` for a
    text-to-image run) best matches `target` [1, C, H, W] (see `project`)."""
    from ganforge.inference import class_name, class_of
    from ganforge.metrics.msssim import ms_ssim

    device = target.device
    if model.conditioning == TEXT:
        if not prompt or not prompt.strip():
            raise OptionError("this is a text-to-image run: give --prompt TEXT, a caption of the image")
        vector = model.encode_text([prompt.strip()]).to(device)
        condition = lambda z: model.generate_from_vectors(vector.expand(len(z), -1), z)  # noqa: E731
    elif model.num_classes:
        if label is None:  # every class tried from the same starts; the closest is kept, and said
            label = closest_class(model, target, seed)
            if report is not None:
                report(f"no --label: tried each of the {model.num_classes} classes, kept class "
                       f"{class_name(run_or_snapshot, label)} (its samples came closest)")
        else:
            label = class_of(model, run_or_snapshot, str(label), "--label")
        condition = lambda z: model.generate(z, Condition(classes=torch.full((len(z),), label, device=device)))  # noqa: E731
    else:
        if label is not None or prompt:
            raise OptionError(f"{model.name} here is unconditional: drop --label and --prompt")
        condition = lambda z: model.generate(z, Condition())  # noqa: E731
    found = project(model, target, condition, steps=steps, seed=seed)
    image, real = found["image"], target.cpu()
    return Projection(latent=found["latent"], image=image, target=real, loss=found["losses"][-1],
                      losses=found["losses"], start=found["start"], label=label, prompt=prompt,
                      psnr_db=psnr(image, real).item(), ms_ssim=ms_ssim((image + 1) * 127.5, (real + 1) * 127.5).item(),
                      frames=found["frames"])

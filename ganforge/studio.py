"""`ganforge studio`: a local web page to look at runs: their samples, walks between seeds, classes
or captions, a run that is still training (its latest grid and curves), its options and metrics.

The page is Gradio (what GAN demos in this field are written in), started with its analytics off
and its own local fonts, so it loads whole without a network. The page reads only runs found under
the folders the studio was started with: a run is chosen by its name in that list, never by a path,
so nothing else on the machine is read or served. Everything model-specific is asked of the model
(its conditioning, classes, resolution) and the pictures come from `generate`'s sampling and
`interpolate`'s walks.
"""

# No `from __future__ import annotations` here: Gradio reads the handlers' annotations (gr.Request)
# as objects, and gradio is imported inside build_page.
import hashlib
import io
import json
import math
import os
import re
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import make_grid

from ganforge.data import load_dataset
from ganforge.errors import GanforgeError, OptionError
from ganforge.explore import blend_frame, kimg_of
from ganforge.inference import class_rows, generate, generate_from_prompts, load_model
from ganforge.models.base import CLASS, TEXT
from ganforge.sampling import MAX_PSI
from ganforge.snapshots import find_snapshot
from ganforge.training.plots import own_file, own_files, plot_stats, read_jsonl, read_stats
from ganforge.training.rundir import run_is_training

RUN_MARKERS = ("training_options.json", "stats.jsonl", "latest.pt")  # any of these makes a folder a run
MAX_DEPTH = 3  # folders below each root searched for runs (runs/, runs/<group>/, ...)
MAX_GRID = 8


# --- runs: found under the roots, named by their place there --------------------------------------
def find_runs(roots: list[Path]) -> dict[str, Path]:
    """{name: run directory} of every run under the roots (a root may itself be a run); a name is
    the root's name and the run's path below it, newest-numbered first."""
    runs = {}
    for root in roots:
        root = root.resolve()
        for folder in _folders(root, MAX_DEPTH):
            if any((folder / marker).is_file() for marker in RUN_MARKERS) or any(folder.glob("snapshot-*.pt")):
                name = "/".join((root.name, *folder.relative_to(root).parts)) if folder != root else root.name
                runs[name if name not in runs else str(folder)] = folder
    return dict(sorted(runs.items(), reverse=True))


def _folders(root: Path, depth: int):
    if not root.is_dir():
        return
    yield root
    if depth > 0:
        for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
            yield from _folders(child, depth - 1)


class Studio:
    """What the page does, as plain functions of its inputs (each returns what the page shows and a
    message; a bad input becomes a message, never a traceback)."""

    def __init__(self, roots: list[str | Path], device: str = "cpu"):
        self.roots = [Path(r) for r in roots]
        self.device = device
        self.runs = find_runs(self.roots)
        self._models: dict[str, tuple[str, float, object]] = {}  # name -> (snapshot, mtime, model)
        self._charts: dict[str, tuple[int, Image.Image | None]] = {}  # name -> (rows charted, chart)
        self._captions: dict[str, list[str]] = {}  # name -> captions of its data (own_captions)

    def refresh(self) -> list[str]:
        self.runs = find_runs(self.roots)
        return list(self.runs)

    def run_dir(self, name: str | None) -> Path:
        if not name:
            raise OptionError("choose a run")
        if not isinstance(name, str):  # the page's API takes any JSON
            raise OptionError(f"run {name!r}: give a run's name")
        if name not in self.runs:
            self.refresh()  # a run started since the page opened
        if name not in self.runs:
            raise OptionError(f"unknown run '{name}': not one of the runs under {', '.join(map(str, self.roots))}")
        return self.runs[name]

    def model(self, name: str):
        """The run's newest snapshot as a model, loaded again when a training run writes a newer one."""
        run = self.run_dir(name)
        try:
            snapshot = find_snapshot(run)
        except GanforgeError:
            snapshot = None
        if snapshot is None or not own_file(run, snapshot):
            raise OptionError(f"{name}: no snapshot yet (samples appear after the run's first --snap)")
        mtime = os.stat(snapshot).st_mtime
        cached = self._models.get(name)
        if cached is None or cached[:2] != (str(snapshot), mtime):
            self._models[name] = (str(snapshot), mtime, load_model(snapshot, self.device))
        return self._models[name][2]

    # --- what the page shows ---
    def describe(self, name: str) -> dict:
        """What the inputs should offer for this run: its conditioning, classes and resolution, and
        for a text-to-image run two captions of its own data to start from."""
        model = self.model(name)
        return {"conditioning": model.conditioning, "num_classes": model.num_classes,
                "resolution": model.sample_resolution, "model": model.name,
                "captions": self.own_captions(name) if model.conditioning == TEXT else []}

    def own_captions(self, name: str) -> list[str]:
        """Two captions of the run's training data (its first image's, and one from halfway through,
        as its grid's rows are spread): what the page starts from, so the first grid a user sees is
        drawn from a caption of the kind the run learned. None when the data is no longer there."""
        if name not in self._captions:
            options = _options(self.run_dir(name))
            try:
                with warnings.catch_warnings():  # unreadable images are the run's business, not the page's
                    warnings.simplefilter("ignore")
                    data = load_dataset(options["data"], options["resolution"], options.get("channels"),
                                        options.get("center_crop", True), options.get("split", "train"), preload=False)
                texts = data.captions or []
            except (GanforgeError, OSError, KeyError):
                texts = []
            self._captions[name] = [texts[i][0] for i in sorted({0, len(texts) // 2}) if texts and texts[i]]
        return self._captions[name]

    def samples(self, name: str, seed: float | None, psi: float, grid: float, label: str | None,
                caption: str | None) -> Image.Image:
        """grid x grid samples of a seed (a class row each when no class is given), or of a caption."""
        model = self.model(name)
        seed, grid, psi = _whole(seed, "seed", 0), _grid(grid), _between(psi, "truncation psi", 0, MAX_PSI)
        if model.conditioning == TEXT:
            images = generate_from_prompts(model, [_caption(caption)], grid * grid, seed, self.device, psi=psi)
            return _picture(images, grid)
        label = _class(model, label)
        n = grid * grid if label is not None or model.conditioning != CLASS else grid * model.num_classes
        images, labels, columns = generate(model, n, seed, label, self.device, psi=psi)
        if label is None and labels is not None:
            images, columns = class_rows(images, labels, grid), grid
        return _picture(images, columns)

    def walk(self, name: str, seeds: tuple[float | None, float | None], t: float, grid: float,
             labels: tuple[str | None, str | None], captions: tuple[str | None, str | None]) -> Image.Image:
        """The image the fraction t of the way from the first seed (and class or caption) to the second."""
        model = self.model(name)
        pair = (_whole(seeds[0], "seed A", 0), _whole(seeds[1], "seed B", 1))
        classes = prompts = None
        if model.conditioning == TEXT:
            prompts = [_caption(captions[0], "caption A"), _caption(captions[1], "caption B")]
        elif model.conditioning == CLASS:
            classes = [_class(model, labels[0], "class A") or 0, _class(model, labels[1], "class B") or 0]
        frame = blend_frame(model, pair, _between(t, "t", 0, 1), _grid(grid), classes, prompts, self.device)
        return Image.fromarray(frame)

    def progress(self, name: str) -> tuple[Image.Image | None, Image.Image | None, str]:
        """A run as it trains: its latest sample grid, its curves and a line of kimg, img/s, ETA."""
        run = self.run_dir(name)
        rows = read_stats(run)
        grids = own_files(run, "fakes*.png")
        grid = Image.open(grids[-1]).convert("RGB") if grids else None
        chart = self.chart(name, run, len(rows))
        if not rows:
            return grid, None, f"**{name}**: no training statistics yet (stats.jsonl is written every tick)"
        last = rows[-1]
        total = _options(run).get("kimg")
        speed = last.get("img_per_sec") or 0.0
        line = [f"**{name}**", f"{last['kimg']:.1f} kimg" + (f" of {total:g}" if total else ""),
                f"{speed:.1f} img/s"]
        age = time.time() - last.get("time", 0)
        # An ETA only for a run a live process is training: a stopped run would never arrive.
        if total and last["kimg"] >= total:
            line.append(f"finished, last wrote {_duration(age)} ago")
        elif not run_is_training(run):
            line.append(f"stopped, last wrote {_duration(age)} ago")
        else:
            line.append("training" + (f", ETA {_duration((total - last['kimg']) * 1000 / speed)}" if total and speed
                                      else ""))
        line.append(f"{len(rows)} points" + (f", grid at {kimg_of(grids[-1].stem[5:]):g} kimg" if grids else ""))
        return grid, chart, " · ".join(line)

    def chart(self, name: str, run: Path, rows: int) -> Image.Image | None:
        """`ganforge plot`'s chart of the run, drawn again only when stats.jsonl has grown."""
        if self._charts.get(name, (None,))[0] != rows:
            with tempfile.TemporaryDirectory() as scratch:
                path = plot_stats(run, Path(scratch) / "stats.png")
                self._charts[name] = (rows, Image.open(path).convert("RGB") if path else None)
        return self._charts[name][1]

    def details(self, name: str) -> tuple[dict, dict]:
        """The run's options (training_options.json) and the last result of each of its metrics."""
        run = self.run_dir(name)
        metrics = {}
        for path in own_files(run, "metric-*.jsonl"):
            rows = read_jsonl(path)
            if rows:
                metrics[path.stem[len("metric-"):]] = rows[-1]
        return _options(run), metrics


def _options(run: Path) -> dict:
    path = run / "training_options.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if own_file(run, path) else {}
    except (OSError, ValueError):
        return {}


def _number(value, what: str) -> float | None:
    """A number from the page or its API, where any JSON may arrive: a number, text or nothing."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise OptionError(f"{what} {value!r}: give a number")
    try:
        return float(value)
    except ValueError:
        raise OptionError(f"{what} {value!r}: give a number") from None


def _whole(value, what: str, default: int) -> int:
    value = _number(value, what)
    if value is None:
        return default
    if not math.isfinite(value) or value != int(value) or not 0 <= value < 2**32:
        raise OptionError(f"{what} {value:g}: give a whole number from 0 to {2**32 - 1}")
    return int(value)


def _between(value, what: str, low: float, high: float) -> float:
    value = _number(value, what)
    if value is None or not math.isfinite(value) or not low <= value <= high:
        raise OptionError(f"{what} {value}: give a number from {low:g} to {high:g}")
    return float(value)


def _grid(value: float | None) -> int:
    grid = _whole(value, "grid", 4)
    if not 1 <= grid <= MAX_GRID:
        raise OptionError(f"grid {grid}: give 1 to {MAX_GRID}")
    return grid


def _class(model, value: str | int | None, what: str = "class") -> int | None:
    """A class id typed on the page (empty: none); the run's classes bound it."""
    text = str(value).strip() if value is not None else ""
    if model.conditioning != CLASS or not text:
        return None
    if not re.fullmatch(r"-?\d+", text):
        raise OptionError(f"{what} '{text}': give a class number from 0 to {model.num_classes - 1}")
    if not 0 <= int(text) < model.num_classes:
        raise OptionError(f"{what} {text} is out of range: this run has classes 0 to {model.num_classes - 1}")
    return int(text)


def _caption(text: str | None, what: str = "caption") -> str:
    if text is not None and not isinstance(text, str):
        raise OptionError(f"{what} {text!r}: give text")
    if not text or not text.strip():
        raise OptionError(f"{what} is empty: this is a text-to-image run, describe the image to draw")
    return text.strip()


def _picture(images: torch.Tensor, columns: int) -> Image.Image:
    grid = make_grid(images, nrow=columns, normalize=True, value_range=(-1, 1), padding=1)
    array = grid.mul(255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if images.shape[1] == 1 else array)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m {seconds % 60:02d}s"


# --- the page -------------------------------------------------------------------------------------
# Small GAN grids are shown enlarged, pixel for pixel (not blurred), within the image's box.
CSS = "#samples img, #walk img, #latest img { image-rendering: pixelated; height: 100%; width: auto; object-fit: contain; }"


class PictureFiles:
    """The page's pictures as PNG files, one per distinct picture, written once (under a temporary
    name, then renamed into place) and never rewritten. Gradio saves a returned PIL image by
    rewriting its cached file in place each time; a picture computed twice (a slider's input and
    release events, the timer's unchanged chart) was then truncated while the browser was still
    fetching it, and the page kept a broken image. Gradio copies a returned file into its cache
    without that race."""

    def __init__(self):
        self._folder = tempfile.TemporaryDirectory(prefix="ganforge-studio-")  # removed when the studio exits
        self.folder = Path(self._folder.name)

    def file(self, picture: Image.Image) -> str:
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        data = buffer.getvalue()
        path = self.folder / f"{hashlib.sha256(data).hexdigest()}.png"
        if not path.exists():
            staging = self.folder / f".{path.name}.{os.getpid()}.{threading.get_ident()}"
            staging.write_bytes(data)
            os.replace(staging, path)
        return str(path)


def build_page(studio: Studio, refresh_seconds: float = 5.0):
    """The Gradio page of a studio (its pictures are files under `page.picture_files.folder`)."""
    import gradio as gr

    pictures = PictureFiles()

    def guard(function, outputs: int, own_line: bool = False):
        """Run a handler; a bad input (or a run that cannot be read) becomes the message line, which
        a success clears. `own_line`: the handler's last output is its own text line (the timer's
        status), which takes the message instead, so a tick never wipes what the user was told.
        Pictures go to the page as files (PictureFiles)."""
        def handler(*args):
            try:
                result = function(*args)
                result = result if isinstance(result, tuple) else (result,)
                result = tuple(pictures.file(r) if isinstance(r, Image.Image) else r for r in result)
                return result if own_line else (*result, "")
            except (GanforgeError, OSError, ValueError, RuntimeError) as e:
                kind = "Note" if isinstance(e, GanforgeError) else type(e).__name__
                return (*(gr.skip() for _ in range(outputs)), f"**{kind}:** {e}")
        return handler

    with gr.Blocks(title="ganforge studio", analytics_enabled=False) as page:
        gr.Markdown("## ganforge studio")
        with gr.Row():
            run = gr.Dropdown(choices=list(studio.runs), value=next(iter(studio.runs), None), label="run",
                              elem_id="run", scale=4, allow_custom_value=True)
            rescan = gr.Button("find new runs", scale=1)
        message = gr.Markdown(elem_id="message")
        with gr.Tab("Samples"):
            with gr.Row():
                seed = gr.Number(value=0, precision=0, label="seed", elem_id="seed")
                psi = gr.Slider(0.0, 1.5, value=1.0, step=0.05, label="truncation psi (1: as trained)", elem_id="psi")
                grid = gr.Slider(1, MAX_GRID, value=4, step=1, label="grid (n x n)", elem_id="grid")
            with gr.Row():
                label = gr.Textbox(label="class (empty: one row per class)", elem_id="label", visible=False)
                caption = gr.Textbox(label="caption (press Enter)", elem_id="caption", visible=False)
            samples = gr.Image(type="pil", format="png", label="samples", elem_id="samples", interactive=False,
                               height=440,
                               buttons=["download"])
        with gr.Tab("Walk"):
            with gr.Row():
                seed_a = gr.Number(value=0, precision=0, label="seed A", elem_id="seed_a")
                seed_b = gr.Number(value=1, precision=0, label="seed B", elem_id="seed_b")
                walk_grid = gr.Slider(1, MAX_GRID, value=1, step=1, label="grid (n x n walks)")
            with gr.Row():
                label_a = gr.Textbox(value="0", label="class A", visible=False)
                label_b = gr.Textbox(value="1", label="class B", visible=False)
                caption_a = gr.Textbox(label="caption A", visible=False)
                caption_b = gr.Textbox(label="caption B", visible=False)
            t = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="from A to B: drag", elem_id="t")
            walk = gr.Image(type="pil", format="png", label="walk", elem_id="walk", interactive=False, height=440)
        with gr.Tab("Training"):
            status = gr.Markdown(elem_id="status")
            with gr.Row():
                latest = gr.Image(type="pil", label="latest sample grid", elem_id="latest", interactive=False,
                                  height=440)
                chart = gr.Image(type="pil", label="curves (stats.jsonl, metrics)", elem_id="chart",
                                 interactive=False)
        with gr.Tab("Options & metrics"):
            with gr.Row():
                options = gr.JSON(label="training options")
                metrics = gr.JSON(label="metrics (last result of each)")
        timer = gr.Timer(refresh_seconds)

        def show_inputs(name):
            kind = studio.describe(name)
            by_class, by_text = kind["conditioning"] == CLASS, kind["conditioning"] == TEXT
            top = kind["num_classes"] - 1 if by_class else 0
            own = kind["captions"] or [""]  # captions of the run's own data, not of another dataset
            return (gr.update(visible=by_class, label=f"class 0-{top} (empty: one row per class)"),
                    gr.update(visible=by_text, value=own[0]),
                    gr.update(visible=by_class, label=f"class A (0-{top})"), gr.update(visible=by_class, label=f"class B (0-{top})"),
                    gr.update(visible=by_text, value=own[0]), gr.update(visible=by_text, value=own[-1]))

        sample_inputs = [run, seed, psi, grid, label, caption]
        walk_inputs = [run, seed_a, seed_b, t, walk_grid, label_a, label_b, caption_a, caption_b]
        draw = guard(studio.samples, 1)
        step = guard(lambda name, a, b, t, g, la, lb, ca, cb: studio.walk(name, (a, b), t, g, (la, lb), (ca, cb)), 1)
        watch = guard(studio.progress, 3)
        read = guard(studio.details, 2)
        conditioned = [label, caption, label_a, label_b, caption_a, caption_b]

        def opened(name, request: gr.Request):
            asked = (request.query_params.get("run") if request else None) or name
            return gr.update(choices=studio.refresh(), value=asked)

        # Opening the page (optionally at ?run=NAME) and picking a run show everything about it.
        for event in (page.load(opened, [run], [run]).then, run.input):
            (event(guard(show_inputs, 6), [run], [*conditioned, message])
             .then(draw, sample_inputs, [samples, message], preprocess=False)
             .then(step, walk_inputs, [walk, message], preprocess=False)
             .then(watch, [run], [latest, chart, status, message])
             .then(read, [run], [options, metrics, message]))
        rescan.click(lambda name: gr.update(choices=studio.refresh(), value=name), [run], [run])
        # The inputs reach the handlers as sent (preprocess=False): the page's API takes any JSON, and
        # Gradio's own conversion of a number field fails with a traceback on text; the handlers check.
        raw = dict(preprocess=False)
        for field in (seed, label, caption):
            field.submit(draw, sample_inputs, [samples, message], **raw)
        for field in (seed, label):
            field.blur(draw, sample_inputs, [samples, message], **raw)
        for field in (psi, grid):
            field.change(draw, sample_inputs, [samples, message], trigger_mode="always_last", **raw)
        for field in (seed_a, seed_b, label_a, label_b, caption_a, caption_b):
            field.submit(step, walk_inputs, [walk, message], **raw)
        for field in (seed_a, seed_b, label_a, label_b):
            field.blur(step, walk_inputs, [walk, message], **raw)
        t.input(step, walk_inputs, [walk, message], trigger_mode="always_last", show_progress="hidden", **raw)
        t.release(step, walk_inputs, [walk, message], **raw)
        walk_grid.change(step, walk_inputs, [walk, message], trigger_mode="always_last", **raw)
        timer.tick(guard(studio.progress, 2, own_line=True), [run], [latest, chart, status], show_progress="hidden")
    page.picture_files = pictures
    return page


def serve(roots: list[str | Path], host: str = "127.0.0.1", port: int | None = None, device: str = "cpu",
          refresh_seconds: float = 5.0):
    """Start the studio on host:port (in a thread); returns the page (`.close()` stops it) and its URL."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: the page works offline
    page = build_page(Studio(roots, device), refresh_seconds)
    _, url, _ = page.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True,
                            ssr_mode=False, css=CSS, footer_links=[], show_error=False,
                            allowed_paths=[str(page.picture_files.folder)])
    return page, url

"""Fine-tuning: a new run whose networks start from another run's (--init-from), and D's first
blocks kept as they are (--freeze-d, FreezeD: Mo et al., 2020).

Only the networks come from the source (G, D and G's EMA); the new run has its own directory and
options, and its optimizers, counters, augmentation p, model state outside the networks (a text
model's sentence normalisation, BEGAN's k_t) and random streams start fresh. The model says which
of its options shape the networks (`GanModel.architecture`), whether it can start from the
source at all (`GanModel.start_from`), and what a block of D is (`GanModel.d_blocks`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from ganforge.errors import OptionError, TrainingError
from ganforge.models import GanModel, model_class
from ganforge.snapshots import SnapshotError, load_snapshot
from ganforge.training.options import TrainOptions

NETWORKS = ("G.", "D.", "G_ema.")  # the state-dict keys a source gives; everything else starts fresh


def read_source(opts: TrainOptions, resume: str | None, explicit: set[str]) -> dict | None:
    """The --init-from snapshot, read before anything is made (None without --init-from, or when a
    run that was started from one is resumed: its own snapshot holds the networks)."""
    if opts.init_from is None:
        return None
    if resume is not None:
        if "init_from" in explicit:
            raise TrainingError(f"--init-from {opts.init_from} with --resume {resume}: --init-from starts a new run, "
                                "--resume continues one; give one of them")
        return None
    try:
        source = load_snapshot(opts.init_from)
    except SnapshotError as e:
        raise TrainingError(f"--init-from: {e}") from e
    if "model_config" not in source or "state" not in source:
        raise TrainingError(f"--init-from {source['path']}: not a training snapshot (no networks in it)")
    source["sha256"] = file_sha256(source["path"])  # which file the run started from, for its options
    return source


def source_options(opts: TrainOptions, source: dict | None) -> TrainOptions:
    """The options with the source's file and hash recorded (training_options.json), once the source
    is known to be a network of this model with these channels."""
    if source is None:
        return opts
    path, theirs, ours = source["path"], model_class(source["model"]), model_class(opts.model)
    if not (issubclass(ours, theirs) or issubclass(theirs, ours)):  # the same networks (dcgan and cdcgan)
        raise TrainingError(f"--init-from {path}: the snapshot holds {source['model']}, this run trains "
                            f"{opts.model} (--model)")
    channels = source["model_config"]["channels"]
    if channels != opts.channels:
        kind = {1: "grey", 3: "colour"}
        raise TrainingError(f"--init-from {path}: --channels {opts.channels} ({kind[opts.channels]}) differs from the "
                            f"source's {channels} ({kind[channels]}); give --channels {channels} to train on these "
                            f"images as {kind[channels]}")
    return dataclasses.replace(opts, init_from=str(Path(path).resolve()), init_from_sha256=source["sha256"])


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def start_from_source(model: GanModel, source: dict | None) -> tuple[list[str], set[str]]:
    """Copy the source's networks into a new run's model; returns the lines for log.txt and the
    names of the tensors made new.

    The options that shape the networks must match, and every tensor the two share must have the
    same shape, except where the number of classes differs: there the tensors that take or give
    the label (G's label embedding, D's label input or head) cannot be carried over and are made
    new. Tensors the source does not have (a progressive model's larger blocks) are made new too."""
    if source is None:
        return [], set()
    path, config, state = source["path"], source["model_config"], source["state"]
    for key in model.architecture:
        if config.get(key) != model.config.get(key):
            raise TrainingError(f"--init-from {path}: --model-opt {key}={model.config.get(key)!r} differs from the "
                                f"source's {config.get(key)!r} (the networks' shapes must match)")
    try:
        notes = model.start_from(config, state)
    except OptionError as e:
        raise TrainingError(f"--init-from {path}: {e}") from e
    labels_differ = config.get("num_classes", 0) != model.num_classes
    copied, made_new = {}, []
    for key, tensor in model.state_dict().items():
        if not key.startswith(NETWORKS):
            continue
        theirs = state.get(key)
        if theirs is not None and theirs.shape == tensor.shape:
            copied[key] = theirs
        elif theirs is None or labels_differ:
            made_new.append(key)
        else:
            raise TrainingError(f"--init-from {path}: tensor {key} has shape {tuple(theirs.shape)} in the source, "
                                f"{tuple(tensor.shape)} here (the networks' shapes must match)")
    model.load_state_dict(copied, strict=False)
    classes = (f"; the source has {config.get('num_classes', 0) or 'no'} classes, this run "
               f"{model.num_classes or 'none'}" if labels_differ else "")
    notes.insert(0, f"init-from {path} (sha256 {source['sha256'][:12]}): {len(copied)} tensors of G, D and G's EMA "
                    f"copied; optimizers, counters, augmentation and random streams start fresh")
    if made_new:
        notes.append(f"init-from: {len(made_new)} tensors made new, not copied{classes}: {', '.join(made_new)}")
    return notes, set(made_new)


def freeze_d(model: GanModel, blocks: int, init_from: str | None, made_new: set[str]) -> list[str]:
    """--freeze-d N: D's first N blocks from the image side get no updates; returns the line for log.txt.
    Only weights a source run trained are worth keeping: without --init-from, or where a frozen
    tensor was made new (a label input the source did not have), the blocks would stay random.

    They are kept out of the gradient (requires_grad False, set again after each phase's switch of
    networks in training.step) rather than left out of the optimizers: a parameter without a
    gradient is skipped by Adam, by the gradient all-reduce of several processes (every rank
    freezes the same ones) and by a CUDA graph's replay alike, and its gradient is never computed;
    left in the graph but out of the optimizer, it would still be differentiated and all-reduced at
    every step, and the models' optimizers (which name their networks whole) would need filtering."""
    if not blocks:
        return []
    available = model.d_blocks()
    if blocks > len(available):
        raise TrainingError(f"--freeze-d {blocks}: {model.name}'s D has {len(available)} blocks")
    if init_from is None:
        raise TrainingError(f"--freeze-d {blocks}: keeps D's first blocks as a source run trained them; give the "
                            "source with --init-from RUN (without it they would stay as initialised)")
    model.frozen_parameters = tuple(p for block in available[:blocks] for p in block.parameters())
    names = {id(p): name for name, p in model.named_parameters()}
    random = [names[id(p)] for p in model.frozen_parameters if names[id(p)] in made_new]
    if random:
        raise TrainingError(f"--freeze-d {blocks}: {random[0]} is in a frozen block but was made new, not copied from "
                            f"--init-from {init_from}; freeze fewer blocks so that it can learn")
    frozen, total = sum(p.numel() for p in model.frozen_parameters), sum(p.numel() for p in model.D.parameters())
    return [f"--freeze-d {blocks}: D's first {blocks} of {len(available)} blocks get no updates "
            f"({frozen:,} of D's {total:,} parameters)"]

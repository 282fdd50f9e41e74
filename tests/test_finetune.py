"""Fine-tuning: a new run from another run's networks (--init-from) and FreezeD (--freeze-d)."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from ganforge.cli import main
from ganforge.models import build_model
from ganforge.snapshots import load_snapshot
from ganforge.training import TrainOptions, train
from ganforge.training.finetune import read_source, start_from_source

TINY = dict(data="mnist", resolution=16, batch=16, tick=0.016, sample_every=1, snap=1)
MODELS = {
    "cdcgan": dict(model="cdcgan", model_opts={"base_channels": 8}),
    "dcgan": dict(model="dcgan", model_opts={"base_channels": 8}),
    # grows 4 -> 8 -> 16 in 0.064 kimg: 16x16 reached and faded in by the end of 0.08
    "pggan": dict(model="pggan", model_opts={"preset": "cpu", "fmap_max": 8, "fade_kimg": 0.016, "stab_kimg": 0.016}),
    "began": dict(model="began", model_opts={"base_channels": 4, "h_dim": 8, "z_dim": 8}),
}
KIMG = {"cdcgan": 0.032, "dcgan": 0.032, "pggan": 0.08, "began": 0.032}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A finished small run of each model, to start others from."""
    root = tmp_path_factory.mktemp("sources")
    return {name: train(TrainOptions(**MODELS[name], **TINY, kimg=KIMG[name], outdir=str(root / name)), progress=False)
            for name in MODELS}


def networks(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.startswith(("G.", "D.", "G_ema."))}


def built_from(source_run, **config) -> tuple:
    """A model built for `config` and loaded from the source run as a new run would be; (model, notes)."""
    source = read_source(TrainOptions(init_from=str(source_run)), None, set())
    model = build_model(config.pop("model"), {"channels": 1, "num_classes": 0, "resolution": 16, **config})
    return model, start_from_source(model, source)[0]


def test_init_from_starts_a_new_run_from_the_source_networks(tmp_path, sources):
    """A new run directory and its own options; G, D and G's EMA from the source, everything else fresh."""
    source = sources["cdcgan"]
    run = train(TrainOptions(**MODELS["cdcgan"], **TINY, kimg=0.016, init_from=str(source), outdir=str(tmp_path)),
                progress=False)
    assert run.parent == tmp_path and run != source
    options = json.loads((run / "training_options.json").read_text())
    assert options["init_from"] == str((source / "latest.pt").resolve())
    assert options["init_from_sha256"] == hashlib.sha256((source / "latest.pt").read_bytes()).hexdigest()
    log = (run / "log.txt").read_text()
    assert f"init-from {source / 'latest.pt'}" in log and "made new" not in log
    snap = load_snapshot(run)
    assert snap["images_seen"] == 16 and snap["step"] == 1  # its own counters, from 0 (the source's reached 2)
    # the same networks before the first step: every tensor copied
    model, notes = built_from(source, model="cdcgan", base_channels=8, num_classes=10)
    theirs = networks(load_snapshot(source)["state"])
    assert all(torch.equal(v, theirs[k]) for k, v in networks(model.state_dict()).items())
    assert len(notes) == 1


def test_a_class_conditional_run_from_another_number_of_classes_makes_the_label_tensors_new(sources):
    source = networks(load_snapshot(sources["cdcgan"])["state"])  # 10 classes
    model, notes = built_from(sources["cdcgan"], model="cdcgan", base_channels=8, num_classes=3)
    new = {"G.embed.weight", "G_ema.embed.weight", "D.label_map.weight"}
    for key, value in networks(model.state_dict()).items():
        assert (key in new) != (value.shape == source[key].shape and torch.equal(value, source[key])), key
    assert "3 tensors made new, not copied; the source has 10 classes, this run 3" in notes[-1]
    assert all(key in notes[-1] for key in new)


def test_a_class_conditional_run_from_an_unconditional_one_logs_the_tensors_not_copied(tmp_path, sources):
    """dcgan's networks are cdcgan's without labels: the label embedding and label map are new, and the
    first layers that take them (their inputs widen); the rest is the source's."""
    run = train(TrainOptions(**MODELS["cdcgan"], **TINY, kimg=0.016, init_from=str(sources["dcgan"]),
                             outdir=str(tmp_path)), progress=False)
    log = (run / "log.txt").read_text()
    line = next(ln for ln in log.splitlines() if "made new" in ln)
    assert "the source has no classes, this run 10" in line
    new = {"G.embed.weight", "G.net.0.weight", "D.label_map.weight", "D.net.0.weight", "G_ema.embed.weight",
           "G_ema.net.0.weight"}
    assert set(line.split(": ")[-1].split(", ")) == new
    model, _ = built_from(sources["dcgan"], model="cdcgan", base_channels=8, num_classes=10)
    source = networks(load_snapshot(sources["dcgan"])["state"])
    assert all(torch.equal(v, source[k]) for k, v in networks(model.state_dict()).items() if k not in new)


def test_pggan_continues_from_the_resolution_the_source_reached(sources):
    assert int(load_snapshot(sources["pggan"])["state"]["grown_resolution"]) == 16
    for target in (16, 32):
        model, notes = built_from(sources["pggan"], **MODELS["pggan"]["model_opts"], model="pggan", resolution=target)
        first = model.schedule(0, None, target)
        assert (first.resolution, first.alpha, first.period) == (16, 1.0, "0016-stable")  # no fade repeated
        assert "schedule starts at 16x16" in notes[1]
    assert model.schedule(15, None, 32).resolution == 16  # 16x16 stabilised, then 32x32 fades in
    assert (model.schedule(17, None, 32).resolution, model.schedule(17, None, 32).alpha < 1) == (32, True)
    assert "G.blocks.32.0.weight" in notes[-1] and "D.from_rgb.32.weight" in notes[-1]  # the new layers


def test_pggan_refuses_a_source_grown_past_the_new_resolution(tmp_path, sources):
    result = CliRunner().invoke(main, ["train", "--model", "pggan", "--data", "mnist", "--resolution", "8",
                                       "--model-opt", "preset=cpu", "--model-opt", "fmap_max=8",
                                       "--init-from", str(sources["pggan"]), "--outdir", str(tmp_path / "runs")])
    assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1
    assert "--resolution 8: the source has grown to 16x16" in result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def write_images(folder, n: int, mode: str = "L"):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = rng.integers(0, 255, (16, 16, 3 if mode == "RGB" else 1), dtype=np.uint8).squeeze()
        Image.fromarray(pixels, mode).save(folder / f"{i}.png")


@pytest.mark.parametrize("case, args, message", [
    ("not a snapshot", [], "not a readable ganforge snapshot"),
    ("run directory without snapshot", [], "no snapshot in this run directory"),
    ("another model's", [], "the snapshot holds pggan, this run trains cdcgan (--model)"),
    ("an option that cannot change", ["--model-opt", "base_channels=16"],
     "--model-opt base_channels=16 differs from the source's 8"),
    ("another resolution", ["--resolution", "32"], "--resolution 32: the source was trained at 16x16"),
    ("colour from grey", ["--channels", "3"], "--channels 3 (colour) differs from the source's 1 (grey)"),
    ("with --resume", ["--resume"], "--init-from starts a new run, --resume continues one"),
])
def test_init_from_refuses_bad_input_in_one_line_and_leaves_no_run_directory(tmp_path, sources, case, args, message):
    source = str(sources["cdcgan"])
    if case == "not a snapshot":
        source = str(tmp_path / "notes.pt")
        (tmp_path / "notes.pt").write_text("not a snapshot")
    elif case == "run directory without snapshot":
        source = str(tmp_path / "empty-run")
        (tmp_path / "empty-run").mkdir()
        (tmp_path / "empty-run" / "training_options.json").write_text("{}")
    elif case == "another model's":
        source = str(sources["pggan"])
    if args == ["--resume"]:
        args = ["--resume", str(sources["cdcgan"])]
    outdir, source_log = tmp_path / "runs", (sources["cdcgan"] / "log.txt").read_text()
    result = CliRunner().invoke(main, ["train", "--data", "mnist", "--resolution", "16", "--model-opt", "base_channels=8",
                                       "--init-from", source, "--outdir", str(outdir), "--kimg", "0.016", *args])
    assert result.exit_code != 0, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output, result.output
    assert message in result.output and ("--init-from" in result.output)
    assert not outdir.exists() or not any(outdir.iterdir())
    assert (sources["cdcgan"] / "log.txt").read_text() == source_log  # the source run is left as it was


@pytest.mark.parametrize("model, blocks", [("cdcgan", 2), ("pggan", 1), ("began", 1)])
def test_freeze_d_keeps_d_first_blocks_bit_identical_and_trains_the_rest(tmp_path, sources, model, blocks):
    check_freeze_d(tmp_path, sources[model], dict(**MODELS[model], **TINY, kimg=0.016), blocks)


def check_freeze_d(tmp_path, source_run, opts: dict, blocks: int, **extra):
    """From the same source, with the same seed: with --freeze-d the first blocks' parameters are
    bit-identical to the source's, and every other parameter of D that the run without it changes
    changes too."""
    source = load_snapshot(source_run)["state"]
    frozen_run = train(TrainOptions(**opts, init_from=str(source_run), freeze_d=blocks, outdir=str(tmp_path / "f"),
                                    **extra), progress=False)
    plain_run = train(TrainOptions(**opts, init_from=str(source_run), outdir=str(tmp_path / "p")), progress=False)
    frozen, plain = load_snapshot(frozen_run)["state"], load_snapshot(plain_run)["state"]
    model = build_model(opts["model"], load_snapshot(frozen_run)["model_config"])
    names = {id(p): f"D.{name}" for name, p in model.D.named_parameters()}
    in_blocks = {names[id(p)] for block in model.d_blocks()[:blocks] for p in block.parameters()}
    assert in_blocks and f"--freeze-d {blocks}: D's first {blocks} of" in (frozen_run / "log.txt").read_text()
    changed_plain = {k for k in names.values() if not torch.equal(plain[k], source[k])}
    assert in_blocks <= changed_plain  # training moves them when they are not frozen
    for key in names.values():
        if key in in_blocks:
            assert torch.equal(frozen[key], source[key]), key
        elif key in changed_plain:
            assert not torch.equal(frozen[key], source[key]), key


def test_freeze_d_holds_in_the_cuda_graph_ready_step(tmp_path, sources):
    """--cuda-graphs' step (run eagerly on the CPU as it would be captured) leaves frozen blocks alone too."""
    check_freeze_d(tmp_path, sources["cdcgan"], dict(**MODELS["cdcgan"], **TINY, kimg=0.016), 1, cuda_graphs=True)


def test_freeze_d_refuses_more_blocks_than_d_has(tmp_path):
    outdir = tmp_path / "runs"
    result = CliRunner().invoke(main, ["train", "--data", "mnist", "--resolution", "16", "--model-opt", "base_channels=8",
                                       "--freeze-d", "4", "--outdir", str(outdir)])
    assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1
    assert "--freeze-d 4: cdcgan's D has 3 blocks" in result.output
    assert not outdir.exists() or not any(outdir.iterdir())


def test_freeze_d_refuses_blocks_that_no_source_trained(tmp_path, sources):
    """Frozen blocks keep what a source run learned: without --init-from, or where the source did not
    have a frozen tensor (dcgan's D takes no label; cdcgan's first convolution does), they would stay
    random for the whole run."""
    outdir = tmp_path / "runs"
    base = ["train", "--data", "mnist", "--resolution", "16", "--model-opt", "base_channels=8", "--outdir", str(outdir)]
    alone = CliRunner().invoke(main, [*base, "--freeze-d", "1"])
    assert alone.exit_code == 1 and "--freeze-d 1: keeps D's first blocks as a source run trained them; give " \
        "the source with --init-from RUN" in alone.output, alone.output
    widened = CliRunner().invoke(main, [*base, "--freeze-d", "1", "--init-from", str(sources["dcgan"])])
    assert widened.exit_code == 1 and "--freeze-d 1: D.net.0.weight is in a frozen block but was made new" \
        in widened.output, widened.output
    assert len(widened.output.strip().splitlines()) == 1
    assert not outdir.exists() or not any(outdir.iterdir())


def captioned(root, captions: list[str]):
    """The captioned layout with one grey image per caption."""
    write_images(root / "images", len(captions))
    (root / "text").mkdir()
    for i, caption in enumerate(captions):
        (root / "text" / f"{i}.txt").write_text(caption + "\n")
    (root / "split.csv").write_text("image,label,split\n" + "".join(f"images/{i}.png,0,train\n"
                                                                    for i in range(len(captions))))
    return root


@pytest.mark.slow
def test_dfgan_from_another_caption_set_refits_the_sentence_normalisation_and_freezes_d(tmp_path):
    opts = dict(model="dfgan", resolution=16, batch=8, model_opts={"nf": 4}, tick=0.008, sample_every=1, snap=1)
    source_run = train(TrainOptions(**opts, data="mnist-captions", kimg=0.016, outdir=str(tmp_path / "src")),
                       progress=False)
    words = ["a red bird on a branch", "a small grey bird", "a bird with a long beak", "a blue bird flying",
             "a yellow bird in the grass", "a black bird on a wire", "a bird in the snow", "a white bird by water"]
    data = captioned(tmp_path / "birds", words)
    check_freeze_d(tmp_path, source_run, dict(**opts, data=str(data), kimg=0.016), 2)
    run = train(TrainOptions(**opts, data=str(data), kimg=0.008, init_from=str(source_run), outdir=str(tmp_path / "t")),
                progress=False)
    source, tuned = load_snapshot(source_run)["state"], load_snapshot(run)
    model = build_model("dfgan", tuned["model_config"])
    raw = model.raw_text_vectors(sorted(set(words)))
    assert torch.allclose(tuned["state"]["text_mean"], raw.mean(0), atol=1e-5)  # fitted on the new captions
    assert not torch.allclose(tuned["state"]["text_mean"], source["text_mean"], atol=1e-3)


@pytest.mark.slow
def test_freeze_d_under_two_gloo_processes(tmp_path, sources):
    """The gradient all-reduce of several processes skips the frozen parameters on every rank alike."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ganforge",
           "train", "--model", "cdcgan", "--data", "mnist", "--resolution", "16", "--batch", "16", "--model-opt",
           "base_channels=8", "--kimg", "0.032", "--init-from", str(sources["cdcgan"]), "--freeze-d", "1",
           "--device", "cpu", "--quiet", "--outdir", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = tmp_path.iterdir()
    source, tuned = load_snapshot(sources["cdcgan"])["state"], load_snapshot(run)["state"]
    assert torch.equal(tuned["D.net.0.weight"], source["D.net.0.weight"])
    assert not torch.equal(tuned["D.net.2.weight"], source["D.net.2.weight"])

import json
import os

import pytest
import torch

from ganforge.data import load_dataset
from ganforge.inference import generate, load_model
from ganforge.models.base import PhaseLoss
from ganforge.metrics.conditional_accuracy import accuracy, train_classifier
from ganforge.training import TrainingError, TrainOptions, train
from ganforge.snapshots import load_snapshot

from conftest import poisoned

TINY = dict(data="mnist", resolution=16, batch=16, model_opts={"base_channels": 8}, tick=0.064, sample_every=0.064, snap=0.064)


def tensors_equal(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            tensors_equal(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            tensors_equal(x, y, f"{where}/{i}")
    else:
        assert a == b, where


@pytest.mark.parametrize("model", ["cdcgan", "began"])
def test_resume_is_bit_for_bit(tmp_path, model):
    opts = {**TINY, "model": model}
    straight = train(TrainOptions(**opts, kimg=0.256, outdir=str(tmp_path / "a")), progress=False)
    first = train(TrainOptions(**opts, kimg=0.128, outdir=str(tmp_path / "b")), progress=False)
    assert load_snapshot(first)["step"] == 8
    resumed = train(TrainOptions(**opts, kimg=0.256), resume=str(first), explicit={"kimg"}, progress=False)
    assert resumed == first  # continues in the same run directory
    a, b = load_snapshot(straight), load_snapshot(resumed)
    assert a["step"] == b["step"] == 16
    for key in ("state", "optimizers", "rng", "stream_position", "images_seen"):
        tensors_equal(a[key], b[key], key)
    rows = [json.loads(line) for line in (resumed / "stats.jsonl").read_text().splitlines()]
    assert rows[-1]["kimg"] == 0.256 and all(r["step"] > 0 for r in rows)


def test_run_directory_contents(tmp_path):
    run = train(TrainOptions(**TINY, kimg=0.128, outdir=str(tmp_path)), progress=False)
    assert run.name == "00000-cdcgan-mnist"
    names = {p.name for p in run.iterdir()}
    assert {"training_options.json", "stats.jsonl", "log.txt", "reals.png", "fakes000000k000.png", "latest.pt"} <= names
    assert {"fakes000000k064.png", "snapshot-000000k064.pt", "snapshot-000000k128.pt"} <= names  # 0.064 kimg apart
    assert any(n.startswith("events.out.tfevents") for n in names)
    assert json.loads((run / "training_options.json").read_text())["batch"] == 16
    assert train(TrainOptions(**TINY, kimg=0.016, outdir=str(tmp_path)), progress=False).name == "00001-cdcgan-mnist"


def test_resume_refuses_a_different_configuration(tmp_path):
    run = train(TrainOptions(**TINY, kimg=0.032, outdir=str(tmp_path)), progress=False)
    before = (run / "latest.pt").read_bytes()
    with pytest.raises(TrainingError, match="--batch 32 differs from the run's 16"):
        train(TrainOptions(**{**TINY, "batch": 32}, kimg=0.064), resume=str(run), explicit={"batch", "kimg"},
              progress=False)
    assert (run / "latest.pt").read_bytes() == before


def test_conditional_model_needs_labels(tmp_path):
    from PIL import Image

    for i in range(4):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
    with pytest.raises(TrainingError, match="needs labelled data"):
        train(TrainOptions(model="cdcgan", data=str(tmp_path), resolution=8, outdir=str(tmp_path / "runs")),
              progress=False)
    run = train(TrainOptions(model="dcgan", data=str(tmp_path), resolution=8, batch=4, kimg=0.008, model_opts={"base_channels": 4},
                             outdir=str(tmp_path / "runs")), progress=False)
    assert (run / "latest.pt").exists()


def test_interrupt_writes_a_snapshot_and_resumes(tmp_path, monkeypatch):
    """SIGINT mid-run stops after the current step with a snapshot; resuming finishes the same run."""
    import signal

    from ganforge.models.cdcgan import CDCGAN

    calls = {"n": 0}
    original = CDCGAN.after_step

    def interrupt_on_third_step(self, stats, ctx, optimizers):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, stats, ctx, optimizers)

    monkeypatch.setattr(CDCGAN, "after_step", interrupt_on_third_step)
    run = train(TrainOptions(**TINY, kimg=0.256, outdir=str(tmp_path)), progress=False)
    assert load_snapshot(run)["step"] == 3
    train(TrainOptions(**TINY, kimg=0.256), resume=str(run), progress=False)
    assert load_snapshot(run)["step"] == 16


@pytest.mark.slow
def test_short_training_draws_the_requested_digits(tmp_path):
    """A few epochs on real MNIST: a classifier trained on real digits recognises the requested class."""
    run = train(TrainOptions(data="mnist", resolution=16, batch=32, model_opts={"base_channels": 16}, kimg=12, tick=4,
                             sample_every=12, snap=12, outdir=str(tmp_path)), progress=False)
    classifier, real_accuracy = train_classifier(load_dataset("mnist", 16), epochs=2)
    assert real_accuracy > 0.9
    model = load_model(run)
    images, labels, _ = generate(model, 500, seed=1)
    score = accuracy(classifier, images, labels)
    untrained = build_untrained_accuracy(model, classifier)
    print(f"conditional accuracy after 12 kimg: {score:.3f} (untrained G: {untrained:.3f}, chance 0.1)")
    assert score > 0.6 and untrained < 0.35


def build_untrained_accuracy(model, classifier):
    from ganforge.models import build_model

    fresh = build_model("cdcgan", model.config).eval()
    images, labels, _ = generate(fresh, 500, seed=1)
    return accuracy(classifier, images, labels)


def test_nonfinite_loss_restores_the_last_snapshot_and_continues(tmp_path, monkeypatch):
    from ganforge.models.cdcgan import CDCGAN

    original, calls = CDCGAN.loss, {"n": 0}

    def poisoned_once(self, phase, reals, labels, ctx):
        out = original(self, phase, reals, labels, ctx)
        if phase == "G":
            calls["n"] += 1
            if calls["n"] == 7:  # step 7, after the snapshot at step 4
                return PhaseLoss(out.loss * float("nan"), {"loss/G": torch.tensor(float("nan"))})
        return out

    monkeypatch.setattr(CDCGAN, "loss", poisoned_once)
    run = train(TrainOptions(**TINY, kimg=0.16, outdir=str(tmp_path)), progress=False)
    snap = load_snapshot(run)
    assert snap["step"] == 10 and all(torch.isfinite(v).all() for v in snap["state"].values() if v.is_floating_point())
    assert "warning: non-finite loss at" in (run / "log.txt").read_text()


def test_a_nonfinite_loss_is_caught_from_the_loss_itself_though_the_model_logs_nothing(tmp_path, monkeypatch):
    """The loop checks each phase's loss, not what the model chose to log: here it logs nothing, and
    the NaN is a constant added to G's loss, so gradients and weights stay finite and only the loss
    value tells."""
    from ganforge.models.cdcgan import CDCGAN

    original, calls = CDCGAN.loss, {"n": 0}

    def nan_loss_logging_nothing(self, phase, reals, labels, ctx):
        loss = original(self, phase, reals, labels, ctx).loss
        if phase == "G":
            calls["n"] += 1
            if calls["n"] == 7:  # step 7, after the snapshot at step 4
                return PhaseLoss(loss + float("nan"))
        return PhaseLoss(loss)

    monkeypatch.setattr(CDCGAN, "loss", nan_loss_logging_nothing)
    run = train(TrainOptions(**TINY, kimg=0.16, outdir=str(tmp_path)), progress=False)
    log = (run / "log.txt").read_text()
    assert "warning: non-finite loss at 0.1 kimg (step 8); restored latest.pt (0.1 kimg)" in log
    assert load_snapshot(run)["step"] == 10


def test_persistent_nan_stops_with_a_clear_message_and_keeps_the_good_snapshot(tmp_path, monkeypatch):
    from ganforge.models.cdcgan import CDCGAN

    original = CDCGAN.loss

    def always_nan_after_step_5(self, phase, reals, labels, ctx):
        out = original(self, phase, reals, labels, ctx)
        return poisoned(out) if ctx.step >= 5 else out

    monkeypatch.setattr(CDCGAN, "loss", always_nan_after_step_5)
    with pytest.raises(TrainingError, match="training diverged; the last good snapshot"):
        train(TrainOptions(**TINY, kimg=0.256, outdir=str(tmp_path)), progress=False)
    snap = load_snapshot(next(tmp_path.iterdir()))
    assert snap["step"] == 4 and all(torch.isfinite(v).all() for v in snap["state"].values() if v.is_floating_point())


def test_failed_snapshot_write_is_clear_and_keeps_the_previous(tmp_path, monkeypatch):
    import ganforge.training.loop as loop

    real_save, calls = loop.save_snapshot, {"n": 0}

    def disk_full_on_third(path, state):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        real_save(path, state)

    monkeypatch.setattr(loop, "save_snapshot", disk_full_on_third)
    with pytest.raises(TrainingError, match="No space left on device; .*latest.pt is intact, resume with"):
        train(TrainOptions(**TINY, kimg=0.256, outdir=str(tmp_path)), progress=False)
    assert load_snapshot(next(tmp_path.iterdir()))["step"] == 8  # one write per --snap (the kept one is a link)


def test_a_stop_that_comes_during_the_last_step_finishes_the_run_without_a_resume_line(tmp_path, monkeypatch, capsys):
    # Ctrl-C (or a scheduler's SIGTERM) while the last step runs: the run reaches its --kimg, so
    # "continue with: ganforge train --resume RUN" sent the user to a resume that asks for a larger --kimg.
    import signal

    import ganforge.training.loop as loop

    real_step = loop.loop_step

    def stop_in_last_step(model, state, *args, **kwargs):
        result = real_step(model, state, *args, **kwargs)
        if state.images_seen >= 64:
            os.kill(os.getpid(), signal.SIGINT)  # arrives before the step returns, as a Ctrl-C inside it would
        return result

    monkeypatch.setattr(loop, "loop_step", stop_in_last_step)
    run = train(TrainOptions(**TINY, kimg=0.064, outdir=str(tmp_path)), progress=False)
    assert load_snapshot(run)["images_seen"] == 64
    assert "continue with" not in capsys.readouterr().err


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "kill_test.py"
    spec = importlib.util.spec_from_file_location("kill_test", path)
    kill_test = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kill_test)
    result = kill_test.kill_and_resume(kills=2, seed=1, max_delay=6.0, workdir=tmp_path, kimg=2)
    assert result["kills_survived"] >= 1 and result["unreadable_snapshots"] == 0 and result["final_weights_equal"]


def test_recover_goes_back_to_the_last_snapshot_with_fresh_noise_then_gives_up(tmp_path):
    from ganforge.data import RealStream
    from ganforge.hardware import make_scalers
    from ganforge.models import build_model
    from ganforge.training.distributed import Dist
    from ganforge.training.loop import Run, RunState, recover

    run = train(TrainOptions(**TINY, kimg=0.064, outdir=str(tmp_path)), progress=False)
    snap = load_snapshot(run)
    opts = TrainOptions(**snap["options"])
    model = build_model("cdcgan", snap["model_config"])
    generator = torch.Generator().manual_seed(5)
    state = RunState(optimizers=model.optimizers(), scalers=make_scalers("fp32", torch.device("cpu")),
                     generator=generator, stream=RealStream(load_dataset("mnist", 16, 1), seed=0))
    state.images_seen, state.step = 999, 99  # where a poisoned step left the run
    # recover reads the run's options, model, state and directory; not its log or stop flag
    this = Run(opts, model, state, run, Dist(), torch.device("cpu"), log=None, stop=None)
    line = recover(this, "non-finite loss")
    assert "non-finite loss at 1.0 kimg (step 99)" in line and "retry 1 of 3" in line
    assert (state.step, state.images_seen) == (snap["step"], snap["images_seen"]) == (4, 64)
    assert state.stream.position == snap["stream_position"] + opts.batch  # the data moved on
    tensors_equal(model.state_dict(), snap["state"])
    saved = torch.Generator()
    saved.set_state(snap["rng"]["loop"])
    assert not torch.equal(torch.randn(4, generator=generator), torch.randn(4, generator=saved))  # fresh noise
    recover(this, "non-finite loss")
    recover(this, "non-finite weights")
    with pytest.raises(TrainingError, match="non-finite loss at 0.1 kimg .step 4.: training diverged"):
        recover(this, "non-finite loss")


def test_runs_written_with_base_channels_as_a_shared_option_resume(tmp_path):
    """Before the width became a model option, training_options.json and snapshots held base_channels."""
    from ganforge.snapshots import save_snapshot

    run = train(TrainOptions(**TINY, kimg=0.064, outdir=str(tmp_path)), progress=False)
    snap = load_snapshot(run)
    old = {k: v for k, v in snap["options"].items() if k != "model_opts"}
    snap["options"] = {**old, "base_channels": 8, "model_opts": {}}
    save_snapshot(run / "latest.pt", {k: v for k, v in snap.items() if k not in ("path", "format_version")})
    resumed = train(TrainOptions(kimg=0.128), resume=str(run), explicit={"kimg"}, progress=False)
    assert load_snapshot(resumed)["options"]["model_opts"] == {"base_channels": 8}


def test_latest_and_the_last_kept_snapshot_are_one_file_on_disk_and_stay_apart_after_a_resume(tmp_path):
    from click.testing import CliRunner

    from ganforge.cli import main

    opts = {**TINY, "snap": 0.032, "tick": 0.032}
    run = train(TrainOptions(**opts, kimg=0.064, outdir=str(tmp_path)), progress=False)
    last = run / "snapshot-000000k064.pt"
    assert (run / "latest.pt").samefile(last)  # one copy of the final state, under two names
    assert not (run / "latest.pt").samefile(run / "snapshot-000000k032.pt")
    before = last.read_bytes()
    train(TrainOptions(**opts, kimg=0.128), resume=str(run), explicit={"kimg"}, progress=False)
    assert last.read_bytes() == before and not (run / "latest.pt").samefile(last)  # a new latest.pt, the kept one kept
    assert (run / "latest.pt").samefile(run / "snapshot-000000k128.pt")
    assert load_snapshot(last)["images_seen"] == 64 and load_snapshot(run)["images_seen"] == 128
    result = CliRunner().invoke(main, ["generate", str(last), "--n", "4", "--out", str(tmp_path / "g.png")])
    assert result.exit_code == 0, result.output

"""No stop loses work, no resume touches a folder it does not own, ordinary mistakes are one clear line."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from ganforge.training import TrainingError, TrainOptions, train
from ganforge.snapshots import load_snapshot

from conftest import ganforge, one_line_error, poisoned

TINY = dict(data="mnist", resolution=16, batch=16, model_opts={"base_channels": 8}, tick=0.032, sample_every=0.064, snap=0.064)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    return train(TrainOptions(**TINY, kimg=0.064, outdir=str(tmp_path_factory.mktemp("runs"))), progress=False)


def test_resume_refuses_a_folder_that_is_not_a_run_and_deletes_nothing(finished_run, tmp_path):
    folder = tmp_path / "thesis"
    folder.mkdir()
    shutil.copy(finished_run / "latest.pt", folder / "model.pt")
    (folder / ".thesis.tmp").write_text("precious")
    (folder / "metric-loss.jsonl").write_text('{"step": 99}\n')
    with pytest.raises(TrainingError, match="is not a ganforge run directory"):
        train(TrainOptions(**TINY, kimg=0.128), resume=str(folder / "model.pt"), explicit={"kimg"}, progress=False)
    assert sorted(p.name for p in folder.iterdir()) == [".thesis.tmp", "metric-loss.jsonl", "model.pt"]
    assert (folder / "metric-loss.jsonl").read_text() == '{"step": 99}\n'


def test_resume_refuses_a_snapshot_of_another_model_copied_in(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    other = train(TrainOptions(**{**TINY, "model": "began"}, kimg=0.032, outdir=str(tmp_path / "b")), progress=False)
    shutil.copy(other / "latest.pt", run / "latest.pt")
    stats = (run / "stats.jsonl").read_text()
    with pytest.raises(TrainingError, match="holds began but the run directory .* is a cdcgan run"):
        train(TrainOptions(**TINY, kimg=0.128), resume=str(run), explicit={"kimg"}, progress=False)
    assert (run / "stats.jsonl").read_text() == stats


def test_resuming_a_finished_run_says_so(finished_run):
    with pytest.raises(TrainingError, match="already reached 0.064 kimg"):
        train(TrainOptions(**TINY, kimg=0.064), resume=str(finished_run), progress=False)


def test_a_second_process_on_one_run_is_refused_and_a_dead_ones_lock_taken_over(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".lock").write_text(str(other.pid))
        with pytest.raises(TrainingError, match=f"being trained by process {other.pid}"):
            train(TrainOptions(**TINY, kimg=0.096), resume=str(run), explicit={"kimg"}, progress=False)
    finally:
        other.kill()
        other.wait()
    train(TrainOptions(**TINY, kimg=0.096), resume=str(run), explicit={"kimg"}, progress=False)
    assert f"took over the lock of process {other.pid}" in (run / "log.txt").read_text()
    assert not (run / ".lock").exists() and load_snapshot(run)["images_seen"] == 96


@pytest.mark.parametrize("opts,message", [
    (dict(device="gpu0"), "--device gpu0: not a device"),
    (dict(outdir="__FILE__"), "cannot make a run directory there"),
])
def test_bad_places_are_named_before_any_work(opts, message, tmp_path):
    if opts.get("outdir") == "__FILE__":
        (tmp_path / "afile").write_text("x")
        opts = dict(outdir=str(tmp_path / "afile"))
    with pytest.raises(TrainingError, match=message):
        train(TrainOptions(**{**TINY, "outdir": str(tmp_path / "r"), **opts}, kimg=0.032), progress=False)


def test_a_stop_during_a_long_evaluation_abandons_it_and_keeps_a_snapshot(tmp_path):
    def slow_evaluator(dataset, run_dir, device, share):
        def evaluate(model):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives while the metric is being computed
            for _ in range(10**9):  # a long evaluation: must be abandoned, not waited for
                pass
        return evaluate

    opts = TrainOptions(**TINY, kimg=1.0, metrics=["swd"], metrics_every=0.064, outdir=str(tmp_path))
    run = train(opts, progress=False, evaluator_factory=slow_evaluator)
    snapshot = load_snapshot(run)
    assert snapshot["images_seen"] == 64  # the step the stop came at: nothing lost
    assert "abandoned: stop requested" in (run / "log.txt").read_text()
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert rows[-1]["kimg"] == 0.064


def cli(*args):
    from click.testing import CliRunner

    from ganforge.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


@pytest.mark.parametrize("args,message", [
    (["--model-opt", "base_channels=abc"], "--model-opt base_channels='abc': cdcgan expects a number"),
    (["--model", "began", "--model-opt", "skip=3"], "began expects true or false"),
    (["--model-opt", "resolution=64"], "resolution is set by --resolution, not --model-opt"),
    (["--resolution", "4096"], "the built-in digits at 4096x4096 needs"),
    (["--batch", str(10**9)], f"--batch {10**9} at 32x32 needs"),
    (["--kimg", "0.0001"], "--kimg 0.0001 is less than one image"),
    (["--device", "gpu0"], "--device gpu0: not a device"),
    (["--model-opt", "lr=-1"], "--model-opt: the optimizer refuses its settings (Invalid learning rate: -1)"),
    (["--model-opt", "z_dim=-4"], "--model-opt z_dim=-4: it sizes cdcgan's networks, so it is a whole number of at "
                                  "least 1 (default: 100)"),
    (["--model-opt", "max_channels=2.5"], "--model-opt max_channels=2.5: it sizes cdcgan's networks"),
    (["--gpus", "2", "--device", "cpu", "--batch", "15"], "batch 15 does not divide among 2 processes"),
    (["--seed", str(2**64 - 1)], f"Invalid value for '--seed': {2**64 - 1} is not in the range"),
])
def test_ordinary_mistakes_are_one_line_and_leave_no_run_directory(args, message, tmp_path):
    result = cli("train", "--outdir", tmp_path / "runs", *args)
    assert result.exit_code != 0 and message in result.output, result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_outputs_are_checked_before_the_work(finished_run, tmp_path):
    (tmp_path / "afile").write_text("x")
    assert "is a file" in cli("generate", finished_run, "--out", tmp_path / "afile").output
    assert "cannot write in" in cli("export", finished_run, "--out", tmp_path / "afile" / "g.onnx").output
    assert "cannot write in" in cli("evaluate", finished_run, "--metrics", "swd", "--out", tmp_path / "afile" / "r.json").output
    assert cli("generate", finished_run, "--n", "4", "--out", tmp_path / "grid.gif").exit_code == 0
    assert (tmp_path / "grid.gif").is_file()


def test_an_empty_class_folder_is_named_not_silently_dropped(tmp_path):
    from PIL import Image

    from ganforge.data import DatasetError, load_dataset

    for name in ("ant", "cat"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / name / "0.png")
    (tmp_path / "bee").mkdir()
    with pytest.raises(DatasetError, match="class folder.s. bee hold no images"):
        load_dataset(str(tmp_path), 8)


def test_plot_skips_a_line_torn_by_a_kill(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    with open(run / "stats.jsonl", "a") as f:
        f.write('{"kimg": 0.09, "st')
    assert cli("plot", run).exit_code == 0


def test_undefined_metric_values_are_json_null():
    from ganforge.api import finite_or_null

    assert json.loads(json.dumps(finite_or_null({"fid": {"fid": float("nan"), "n": 1}}))) == {"fid": {"fid": None, "n": 1}}


def test_project_errors_are_one_line_faults_keep_their_traceback(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from ganforge.cli import main

    runner = CliRunner()
    one_line = runner.invoke(main, ["train", "--model-opt", "nf=3", "--outdir", str(tmp_path)])
    assert one_line.exit_code == 1 and "Error: --model-opt nf: not an option of cdcgan" in one_line.output
    assert one_line.exception is None or isinstance(one_line.exception, SystemExit)
    debug = runner.invoke(main, ["--debug", "train", "--model-opt", "nf=3", "--outdir", str(tmp_path)])
    assert debug.exit_code == 1 and "not an option of cdcgan" in str(debug.exception)  # raised: a traceback

    def broken(*args, **kwargs):
        raise ValueError("an internal mistake")

    monkeypatch.setattr("ganforge.training.loop.train", broken)
    fault = runner.invoke(main, ["train", "--outdir", str(tmp_path)])
    assert isinstance(fault.exception, ValueError) and "probably a bug: please report it" in fault.output


def test_a_failed_start_leaves_no_run_directory(tmp_path):
    def refusing(dataset, run_dir, device, share):
        raise TrainingError("--metrics acc: refused for this data")

    opts = TrainOptions(**TINY, kimg=0.032, metrics=["acc"], outdir=str(tmp_path))
    with pytest.raises(TrainingError, match="refused"):
        train(opts, progress=False, evaluator_factory=refusing)
    assert list(tmp_path.iterdir()) == []
    assert train(TrainOptions(**TINY, kimg=0.032, outdir=str(tmp_path)), progress=False).name == "00000-cdcgan-mnist"


def test_a_run_directory_removed_while_training_is_one_line_not_a_traceback(tmp_path, monkeypatch):
    """`rm -rf` of a running run's folder: the next write fails; the run says so in one line (before, a
    second FileNotFoundError from tidying the vanished folder replaced it with a raw traceback)."""
    from ganforge.training.runlog import RunLog

    grids = RunLog.grids

    def removed_first(log, *args, **kwargs):
        shutil.rmtree(log.run_dir)
        return grids(log, *args, **kwargs)

    monkeypatch.setattr(RunLog, "grids", removed_first)
    with pytest.raises(TrainingError, match=r"00000-cdcgan-mnist was removed while the run was writing in it"):
        train(TrainOptions(**{**TINY, "sample_every": 0.032}, kimg=0.064, outdir=str(tmp_path)), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_run_directory_whose_options_cannot_be_written_is_removed(tmp_path, monkeypatch):
    def disk_full(run_dir, opts, processes=1):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("ganforge.training.loop.write_options", disk_full)
    with pytest.raises(TrainingError, match="cannot write in the new run directory .No space left"):
        train(TrainOptions(**TINY, kimg=0.032, outdir=str(tmp_path)), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_hostile_input_catalogue_fast_subset():
    """benchmarks/hostile_inputs.py, the cases that need no second training run: no traceback, nothing
    silent, no work lost (the whole catalogue is in benchmarks/RESULTS.md)."""
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from hostile_inputs import main_

    assert main_(["--cases", "1,2,5,8,9,10,12,13,16,17,18,20,21,22,24,25,26,28,29"]) == 0


@pytest.mark.parametrize("command", [["export", "--format", "torchscript"], ["evaluate", "--metrics", "swd", "--n", "64"]])
@pytest.mark.parametrize("name", ["latest.pt", "snapshot-000000k064.pt", "training_options.json", "stats.jsonl"])
def test_an_output_is_never_one_of_the_runs_own_files(finished_run, command, name, tmp_path):
    kept = finished_run / name
    before = kept.read_bytes()
    result = cli(command[0], finished_run, *command[1:], "--out", kept)
    assert result.exit_code != 0 and name in result.output and "keeps in the run" in result.output, result.output
    assert kept.read_bytes() == before


def test_plot_never_replaces_the_runs_logs(finished_run):
    before = (finished_run / "stats.jsonl").read_bytes()
    result = cli("plot", finished_run, "--out", finished_run / "stats.jsonl")
    assert result.exit_code != 0 and "stats.jsonl is a file ganforge keeps in the run" in result.output, result.output
    assert (finished_run / "stats.jsonl").read_bytes() == before


def test_an_export_never_replaces_the_snapshot_it_reads(finished_run, tmp_path):
    copy = tmp_path / "mine.pt"  # a snapshot outside any run
    shutil.copy(finished_run / "latest.pt", copy)
    result = cli("export", copy, "--format", "torchscript", "--out", copy)
    assert result.exit_code != 0 and "mine.pt" in result.output and load_snapshot(copy)["step"] >= 0


def test_the_final_snapshot_in_the_whole_kimg_of_a_kept_one_gets_its_own_name(tmp_path):
    options = {**TINY, "batch": 64, "tick": 1, "sample_every": 10, "snap": 1}
    run = train(TrainOptions(**options, kimg=1.5, outdir=str(tmp_path / "runs")), progress=False)
    kept = {p.name: load_snapshot(p)["images_seen"] for p in run.glob("snapshot-*.pt")}
    assert kept == {"snapshot-000001.pt": 1024, "snapshot-000001k536.pt": 1536}, kept


def test_a_snapshot_with_nan_weights_is_refused_naming_the_tensor(finished_run, tmp_path):
    from ganforge.snapshots import save_snapshot

    snap = load_snapshot(finished_run)
    del snap["path"], snap["format_version"]
    name = next(k for k, v in snap["state"].items() if k.startswith("G_ema.") and v.is_floating_point())
    snap["state"][name] = torch.full_like(snap["state"][name], float("nan"))
    poisoned = tmp_path / "poisoned.pt"
    save_snapshot(poisoned, snap)
    for command in (["generate", "--n", "4", "--out", tmp_path / "grid.png"],
                    ["export", "--format", "torchscript", "--out", tmp_path / "g.pt"],
                    ["evaluate", "--metrics", "swd", "--n", "64", "--out", tmp_path / "r.json"]):
        result = cli(command[0], poisoned, *command[1:])
        assert result.exit_code != 0 and f"tensor {name} holds NaN or Inf" in result.output, result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["poisoned.pt"]


def test_a_seed_out_of_range_is_one_line_for_generate_and_interpolate(finished_run, tmp_path):
    result = cli("generate", finished_run, "--n", "4", "--seed", 2**64, "--out", tmp_path / "grid.png")
    assert result.exit_code == 2 and f"'--seed': {2**64} is not in the range" in result.output, result.output
    result = cli("interpolate", finished_run, "--seeds", f"1,{2**63}", "--out", tmp_path / "walk.gif")
    assert result.exit_code == 2 and "'--seeds'" in result.output and "give whole numbers 0.." in result.output
    assert "Traceback" not in result.output and not any(tmp_path.iterdir())


def test_a_resume_with_a_wrong_shape_tensor_is_one_line_naming_it_and_both_shapes(finished_run, tmp_path):
    from ganforge.snapshots import save_snapshot

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    snap = load_snapshot(run)
    del snap["path"], snap["format_version"]
    name = next(k for k, v in snap["state"].items() if k.startswith("G.") and v.dim() == 4)
    shape = tuple(snap["state"][name].shape)
    snap["state"][name] = torch.zeros(shape[0] + 1, *shape[1:])
    save_snapshot(run / "latest.pt", snap)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    result = cli("train", "--resume", run, "--kimg", "0.128")
    assert result.exit_code == 1, result.output
    assert f"tensor {name} has shape {(shape[0] + 1, *shape[1:])}, the networks expect {shape}" in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    result = cli("generate", run, "--n", "4", "--out", tmp_path / "grid.png")
    assert result.exit_code == 1 and f"tensor {name} has shape" in result.output, result.output


def test_a_first_snapshot_that_cannot_be_written_claims_no_previous_one(tmp_path, monkeypatch):
    def disk_full(path, state):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("ganforge.training.loop.save_snapshot", disk_full)
    with pytest.raises(TrainingError) as failed:
        train(TrainOptions(**TINY, kimg=0.064, outdir=str(tmp_path)), progress=False)
    message = str(failed.value)
    assert "No space left on device" in message and "the run has no snapshot yet" in message, message
    assert "intact" not in message and "--resume" not in message
    assert not list(tmp_path.rglob("*.pt"))  # nothing to resume; the log of its ticks stays (the test below)


def test_a_nan_at_the_first_step_leaves_no_run_directory(tmp_path, monkeypatch):
    from ganforge.models.cdcgan import CDCGAN

    original = CDCGAN.loss
    monkeypatch.setattr(CDCGAN, "loss", lambda self, *args: poisoned(original(self, *args)))
    with pytest.raises(TrainingError, match="step 1.: training diverged; no snapshot yet"):
        train(TrainOptions(**{**TINY, "tick": 0.016}, kimg=0.064, outdir=str(tmp_path)), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_run_that_fails_after_its_first_tick_keeps_its_log_though_it_has_no_snapshot(tmp_path, monkeypatch):
    """Only a run with nothing in it goes: one that ticked keeps log.txt and stats.jsonl, which say
    what it did before it failed."""
    from ganforge.models.cdcgan import CDCGAN

    original, calls = CDCGAN.loss, []

    def nan_after_two_ticks(self, *args):
        calls.append(1)
        out = original(self, *args)
        return poisoned(out) if len(calls) > 8 else out  # two phases a step: a NaN from the fifth step

    monkeypatch.setattr(CDCGAN, "loss", nan_after_two_ticks)
    with pytest.raises(TrainingError, match="training diverged; no snapshot yet"):
        train(TrainOptions(**{**TINY, "snap": 0.128}, kimg=0.128, outdir=str(tmp_path)), progress=False)
    (run,) = tmp_path.iterdir()
    assert (run / "stats.jsonl").read_text().count("\n") >= 1 and (run / "log.txt").exists()


def test_a_sigterm_before_the_first_step_leaves_no_run_directory(tmp_path):
    """A real SIGTERM, sent while the new run writes its first grids (its directory is made, no step yet)."""
    script = """if True:
        import os, signal, sys
        from ganforge.training.runlog import RunLog
        original = RunLog.start_grids
        def terminated_here(self, *args, **kwargs):
            os.kill(os.getpid(), signal.SIGTERM)
            return original(self, *args, **kwargs)
        RunLog.start_grids = terminated_here
        from ganforge.cli import main
        main(sys.argv[1:])
    """
    result = subprocess.run([sys.executable, "-c", script, "train", "--resolution", "16", "--batch", "16", "--kimg",
                             "0.064", "--model-opt", "base_channels=8", "--quiet", "--outdir", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Error: stopped before the first step" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_stale_lock_whose_id_now_belongs_to_another_process_is_taken_over(finished_run, tmp_path):
    from ganforge.training.rundir import process_start

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = process_start(unrelated.pid)
        if started is None:
            pytest.skip("no /proc here to tell processes apart")
        boot, _, ticks = started.rpartition("/")
        # the lock of a training process that had this id before and started earlier (it died)
        (run / ".lock").write_text(f"{unrelated.pid} {boot}/{int(ticks) - 1}")
        train(TrainOptions(**TINY, kimg=0.096), resume=str(run), explicit={"kimg"}, progress=False)
        log = (run / "log.txt").read_text()
        assert f"took over the lock of process {unrelated.pid}, which no longer runs (its id now belongs" in log
        assert not (run / ".lock").exists() and load_snapshot(run)["images_seen"] == 96
        (run / ".lock").write_text(f"{unrelated.pid} {started}")  # the live process that holds the lock
        with pytest.raises(TrainingError, match=f"being trained by process {unrelated.pid}"):
            train(TrainOptions(**TINY, kimg=0.128), resume=str(run), explicit={"kimg"}, progress=False)
    finally:
        unrelated.kill()
        unrelated.wait()


def test_an_mp4_without_the_video_extra_is_refused_before_any_work(finished_run, tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # the [video] extra not installed: its import fails
    with pytest.raises(ImportError):
        import imageio_ffmpeg  # noqa: F401

    def no_work(*args, **kwargs):
        raise AssertionError("the work started before the missing extra was named")

    monkeypatch.setattr("ganforge.explore.project", no_work)
    monkeypatch.setattr("ganforge.explore.walk_frames", no_work)
    monkeypatch.setattr("ganforge.explore.timelapse_frames", no_work)
    Image.new("L", (16, 16)).save(tmp_path / "target.png")
    for command in (["project", finished_run, "--image", tmp_path / "target.png", "--label", "1", "--out",
                     tmp_path / "p"],
                    ["interpolate", finished_run, "--out", tmp_path / "walk.mp4"],
                    ["timelapse", finished_run, "--out", tmp_path / "t.mp4"]):
        result = cli(*command)
        assert result.exit_code == 1 and "needs the [video] extra: pip install 'ganforge[video]'" in result.output, \
            (command[0], result.output)
        assert len(result.output.strip().splitlines()) == 1


def png_declaring(path, width, height):
    """A small valid PNG whose header then declares width x height (its CRC fixed): a decompression bomb."""
    import io
    import struct
    import zlib

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR's width and height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def test_an_image_declaring_50000_by_50000_pixels_is_skipped_without_decoding(tmp_path, monkeypatch):
    from PIL import Image, ImageFile

    from ganforge.data import load_dataset

    for i in range(3):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / f"{i}.png")
    png_declaring(tmp_path / "huge.png", 50_000, 50_000)
    decoded, original = [], ImageFile.ImageFile.load

    def recording_load(self):
        decoded.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording_load)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image.*huge\.png"):
        ds = load_dataset(str(tmp_path), 8)
    assert len(ds) == 3 and [os.path.basename(f) for f in ds.bad_files] == ["huge.png"]
    assert (50_000, 50_000) not in decoded and (8, 8) in decoded


def test_a_shard_label_far_beyond_the_data_is_refused_naming_the_entry(tmp_path):
    import io
    import tarfile

    from PIL import Image

    from ganforge.data import DatasetError, load_dataset

    with tarfile.open(tmp_path / "000000.tar", "w") as tar:
        for key, label in (("a", "0"), ("b", "1"), ("c", "999999")):
            png = io.BytesIO()
            Image.new("RGB", (8, 8)).save(png, "PNG")
            for name, data in ((f"{key}.png", png.getvalue()), (f"{key}.cls", label.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DatasetError, match=r"000000\.tar:c\.cls: label 999999 out of range \(3 images take ids below 1,000\)"):
        load_dataset(str(tmp_path / "000000.tar"), 8)


def test_a_walk_too_long_to_hold_is_refused_naming_the_options_before_allocating(finished_run, tmp_path):
    result = cli("interpolate", finished_run, "--seconds", "10000000", "--fps", "120", "--out", tmp_path / "walk.gif")
    assert result.exit_code == 1, result.output
    assert "--seconds 1e+07 at --fps 120 (1,200,000,000 frames of 16x16) needs" in result.output, result.output
    assert "lower --seconds, --fps" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "walk.gif").exists()


def test_a_timelapse_grid_declaring_a_huge_size_is_refused_from_its_header(finished_run, tmp_path, monkeypatch):
    from PIL import ImageFile

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    png_declaring(run / "fakes000001.png", 25_000, 25_000)
    decoded = []

    def refusing_huge_loads(self):  # a decode of the crafted grid would take gigabytes: record it instead
        decoded.append(self.size)
        raise OSError("decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refusing_huge_loads)
    result = cli("timelapse", run, "--out", tmp_path / "t.gif")
    assert result.exit_code == 1 and "fakes000001.png: refused, its header declares 25000x25000 pixels" in result.output, \
        result.output
    assert decoded == [] and not (tmp_path / "t.gif").exists()


def test_generate_from_prompts_checks_the_memory_of_all_its_images_first(finished_runs, tmp_path):
    run = finished_runs / "done" / "00001-dfgan-mnist-captions"
    result = cli("generate", run, "--prompt", "a handwritten digit one", "--n", 10**12, "--out", tmp_path / "g.png")
    assert result.exit_code == 1, result.output
    assert "--n 1000000000000 images for each of 1 prompt(s) at 16x16 needs" in result.output, result.output
    assert "lower --n or the number of prompts" in result.output and len(result.output.strip().splitlines()) == 1


def test_a_split_csv_label_far_beyond_the_data_is_refused_naming_the_line(tmp_path):
    from PIL import Image

    from ganforge.data import DatasetError, load_dataset

    (tmp_path / "images").mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / f"{name}.png")
    (tmp_path / "split.csv").write_text("image,label,split\nimages/a.png,0,train\nimages/b.png,999999,train\n")
    with pytest.raises(DatasetError, match=r"split.csv:3: label 999999 out of range \(2 images take ids below 1,000\)"):
        load_dataset(str(tmp_path), 8)


def digit_pngs(folder, n: int):
    from PIL import Image

    from ganforge.data import load_dataset

    folder.mkdir()
    for i, digit in enumerate(load_dataset("mnist", 16).images[:n]):
        Image.fromarray(digit[0].numpy()).save(folder / f"{i}.png")
    return folder


def test_evaluate_refuses_one_real_image_saying_how_many_the_metric_needs(finished_run, tmp_path):
    one = digit_pngs(tmp_path / "one", 1)
    message = one_line_error(ganforge("evaluate", finished_run, "--real", one, "--metrics", "swd", "--n", "8"))
    assert message == f"Error: --metrics swd: needs at least 2 real images (in {one}), found 1"
    many = digit_pngs(tmp_path / "many", 8)
    result = cli("evaluate", "--fake", many, "--real", one, "--metrics", "swd,msssim", "--n", "8")
    assert result.exit_code == 1 and "--metrics swd: needs at least 2 real images" in result.output, result.output


def test_evaluate_refuses_a_fake_folder_of_one_image(tmp_path):
    one, many = digit_pngs(tmp_path / "one", 1), digit_pngs(tmp_path / "many", 8)
    for metrics in ("swd", "msssim"):
        result = cli("evaluate", "--fake", one, "--real", many, "--metrics", metrics)
        assert result.exit_code == 1 and f"--metrics {metrics}: needs at least 2 generated images, found 1" in result.output, \
            result.output


def test_a_disk_filling_during_a_grid_write_stops_in_one_line_with_latest_pt_intact(finished_run, tmpfs):
    disk = tmpfs("disk", size="3m")
    run = disk / "run"
    run.mkdir()
    for path in finished_run.iterdir():
        if path.is_file() and not path.name.startswith(("snapshot-", "events.", "stats.png")):
            shutil.copy(path, run / path.name)
    free = shutil.disk_usage(disk).free
    (disk / "filler").write_bytes(bytes(free - 12 * 1024))  # room for log lines and stats rows, not a grid
    before = (run / "latest.pt").read_bytes()
    message = one_line_error(ganforge("train", "--resume", run, "--kimg", "0.128", "--quiet"))
    assert message == (f"Error: could not write in {run}: No space left on device; the last snapshot {run / 'latest.pt'} "
                       f"is intact; make room, then resume with: ganforge train --resume {run}")
    assert (run / "latest.pt").read_bytes() == before
    assert sorted(p.name for p in run.glob("fakes*.png")) == sorted(p.name for p in finished_run.glob("fakes*.png"))


def test_a_full_or_read_only_disk_under_any_output_is_one_line(finished_run, tmpfs):
    disk = tmpfs("full", size="1m")
    (disk / "filler").write_bytes(bytes(shutil.disk_usage(disk).free - 4096))
    message = one_line_error(ganforge("generate", finished_run, "--n", "64", "--out", disk / "grid.png"))
    assert message == f"Error: No space left on device: {disk / 'grid.png'}" and not (disk / "grid.png").exists()
    read_only = tmpfs("ro", read_only=True)
    result = cli("plot", finished_run, "--out", read_only / "s.png")
    assert result.exit_code != 0 and "Read-only file system" in result.output, result.output


def test_an_export_onto_a_full_disk_is_one_line_not_an_abort(finished_run, tmpfs):
    disk = tmpfs("full", size="1m")
    (disk / "filler").write_bytes(bytes(shutil.disk_usage(disk).free - 8192))
    result = ganforge("export", finished_run, "--format", "torchscript", "--out", disk / "g.pt")
    assert one_line_error(result) == f"Error: No space left on device: {disk / 'g.pt'}" and not (disk / "g.pt").exists()


def test_evaluate_without_a_metric_is_one_line(finished_run):
    result = cli("evaluate", finished_run, "--metrics", "", "--n", "8")
    assert result.exit_code == 1 and "--metrics: give one metric or more" in result.output, result.output


def test_plot_skips_rows_that_are_not_rows_at_a_kimg(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    with open(run / "stats.jsonl", "a") as f:
        f.write('[1, 2]\n{"kimg": "x", "loss/G": 1}\n"text"\n{"loss/G": 3}\n')
    result = cli("plot", run)
    assert result.exit_code == 0 and (run / "stats.png").is_file(), result.output


def test_plot_of_rows_without_a_number_to_chart_is_one_line(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "stats.jsonl").write_text('{"kimg": 1, "loss/G": "a"}\n{"kimg": 2}\n')
    result = cli("plot", run)
    assert result.exit_code == 1 and "not enough rows in stats.jsonl to plot yet" in result.output, result.output


def test_a_nan_psi_or_gamma_is_refused_not_drawn_as_black_images(finished_run, tmp_path):
    """click's FloatRange lets NaN through (every comparison with it is false): `generate --psi nan`
    wrote a grid of black images with exit 0."""
    import ganforge

    result = cli("generate", finished_run, "--psi", "nan", "--out", tmp_path / "g.png")
    assert result.exit_code == 2 and "'--psi': nan is not a number in the range 0<=x<=2" in result.output
    assert not (tmp_path / "g.png").exists()
    result = cli("train", "--model", "began", "--gamma", "nan", "--outdir", tmp_path / "runs")
    assert result.exit_code == 2 and "'--gamma': nan is not a number" in result.output
    g = ganforge.load(finished_run)
    for psi in (float("nan"), float("inf"), -0.5):
        with pytest.raises(ganforge.OptionError, match="psi .*: give a number from 0 to 2"):
            g.sample(4, psi=psi)
    assert g.sample(2, psi=0.5).isfinite().all()


def test_a_grid_drawn_during_training_is_never_replaced_by_an_output(finished_run, tmp_path):
    """`generate RUN --out RUN/reals.png` (or a fakes<kimg>.png) replaced the run's record of its training
    with exit 0: those grids were drawn by the generator of that kimg and cannot be drawn again."""
    grids = sorted(p for p in finished_run.iterdir() if p.suffix == ".png")
    assert {"reals.png", "stats.png"} <= {p.name for p in grids} and any(p.name.startswith("fakes") for p in grids)
    before = {p: p.read_bytes() for p in grids}
    for grid in grids:
        result = cli("generate", finished_run, "--n", "4", "--out", grid)
        assert result.exit_code == 2 and "is a file ganforge keeps in the run" in result.output, result.output
    assert {p: p.read_bytes() for p in grids} == before
    assert cli("generate", finished_run, "--n", "4", "--out", finished_run / "samples.png").exit_code == 0
    (finished_run / "samples.png").unlink()

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from ganforge.cli import main

TINY = ["--resolution", "16", "--batch", "16", "--base-channels", "8", "--kimg", "0.064", "--tick", "0.032",
        "--sample-every", "0.064", "--snap", "0.064", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    result = CliRunner().invoke(main, ["train", *TINY, "--outdir", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out / "00000-cdcgan-mnist"


def test_dry_run_prints_resolved_options_and_writes_nothing(tmp_path):
    result = CliRunner().invoke(main, ["train", "--dry-run", "--outdir", str(tmp_path / "r"), "--batch", "8"])
    assert result.exit_code == 0
    opts = json.loads(result.output)
    assert opts["batch"] == 8 and opts["model"] == "cdcgan" and opts["data"] == "mnist" and opts["kimg"] == 100
    assert not (tmp_path / "r").exists()


def test_dry_run_prints_what_auto_resolves_to_for_this_run(tmp_path):
    from ganforge.hardware import resolve_device

    (tmp_path / "photos").mkdir()
    for i in range(8):
        Image.new("RGB", (16, 16), (i * 30, 0, 0)).save(tmp_path / "photos" / f"{i}.png")
    small = CliRunner().invoke(main, ["train", "--dry-run", "--model", "dcgan", "--data", str(tmp_path / "photos"),
                                      "--resolution", "16", "--outdir", str(tmp_path / "r")])
    assert small.exit_code == 0, small.output
    opts = json.loads(small.output)
    assert opts["augment"] == "ada"  # auto, for 8 images (under 30,000)
    assert opts["device"] == "auto" and opts["device_resolved"] == str(resolve_device("auto"))  # as the run records it
    fixed = CliRunner().invoke(main, ["train", "--dry-run", "--model", "dcgan", "--data", str(tmp_path / "photos"),
                                      "--resolution", "16", "--augment-p", "0.3", "--outdir", str(tmp_path / "r")])
    assert json.loads(fixed.output)["augment"] == "diffaug"  # a fixed p asks for augmentation whatever the size
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args,message", [
    (["--resolution", "30"], "30 is not a power of two"),
    (["--kimg", "nan"], "must be a finite number > 0"),
    (["--kimg", "-1"], "must be a finite number > 0"),
    (["--batch", "0"], "--batch"),
    (["--batch", "many"], "'many' is not a valid integer"),
    (["--model", "stylegan9"], "--model"),
    (["--data", "/no/such/place"], "--data /no/such/place: no such file or folder"),
])
def test_bad_options_are_named(args, message, tmp_path):
    result = CliRunner().invoke(main, ["train", "--outdir", str(tmp_path), *args])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_generate_grid_and_folder(run_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["generate", str(run_dir), "--n", "20", "--out", str(tmp_path / "grid.png")])
    assert result.exit_code == 0, result.output
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size == (2 * 17 + 1, 10 * 17 + 1)  # one row per class, 2 columns of 16 px + 1 px padding
    result = runner.invoke(main, ["generate", str(run_dir), "--n", "5", "--label", "3", "--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    files = sorted((tmp_path / "d").iterdir())
    assert len(files) == 5 and Image.open(files[0]).size == (16, 16)
    result = runner.invoke(main, ["generate", str(run_dir), "--label", "10", "--out", str(tmp_path / "x.png")])
    assert result.exit_code != 0 and "--label 10: out of range" in result.output


def test_generate_spreads_n_over_the_classes(run_dir, tmp_path):
    result = CliRunner().invoke(main, ["generate", str(run_dir), "--n", "64", "--out", str(tmp_path / "all")])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "all").iterdir())) == 64
    from ganforge.inference import generate, load_model

    _, labels, columns = generate(load_model(run_dir), 64)
    assert torch.bincount(labels).tolist() == [7, 7, 7, 7, 6, 6, 6, 6, 6, 6] and columns == 7
    result = CliRunner().invoke(main, ["generate", str(run_dir), "--n", "64", "--out", str(tmp_path / "g.png")])
    assert Image.open(tmp_path / "g.png").size == (7 * 17 + 1, 10 * 17 + 1)  # one row per class


def test_help_answers_without_importing_torch():
    import subprocess
    import sys

    for command in ("train", "generate", "evaluate", "export", "plot", "bench"):
        code = (f"import sys; from click.testing import CliRunner; from ganforge.cli import main; "
                f"r = CliRunner().invoke(main, ['{command}', '--help']); assert r.exit_code == 0, r.output; "
                f"print('torch' in sys.modules)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip() == "False", command


def test_every_option_has_help_and_shared_defaults_agree():
    seen = {}
    for name, command in main.commands.items():
        for param in command.params:
            if param.param_type_name != "option":
                continue
            assert param.help, f"{name} {param.opts[0]} has no help"
            if param.name in ("device", "seed", "precision"):
                assert seen.setdefault(param.name, param.default) == param.default, f"{name} {param.opts[0]}"


def test_the_data_options_of_dataset_and_evaluate_are_trains_own():
    """--resolution, --channels, --center-crop and --split are declared once (on TrainOptions): the
    commands that share them check them alike, and say the same where they mean the same."""
    def option(command, name):
        return next(p for p in main.commands[command].params if p.name == name)

    for command in ("dataset", "evaluate"):
        assert option(command, "resolution").callback is option("train", "resolution").callback
    for name in ("channels", "center_crop"):
        assert option("dataset", name).help == option("train", name).help
        assert option("dataset", name).type.to_info_dict() == option("train", name).type.to_info_dict()
    assert option("evaluate", "split").type.choices == option("train", "split").type.choices
    assert option("evaluate", "split").default is None  # the run's own split


def test_generate_is_reproducible_by_seed(run_dir, tmp_path):
    runner = CliRunner()
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        runner.invoke(main, ["generate", str(run_dir), "--n", "4", "--seed", seed, "--out", str(tmp_path / f"{name}.png")])
    a, b, c = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_resume_from_the_cli(run_dir):
    result = CliRunner().invoke(main, ["train", "--resume", str(run_dir), "--kimg", "0.096", "--quiet"])
    assert result.exit_code == 0, result.output
    from ganforge.snapshots import load_snapshot

    assert load_snapshot(run_dir)["images_seen"] == 96
    result = CliRunner().invoke(main, ["train", "--resume", str(run_dir), "--resolution", "32"])
    assert result.exit_code != 0 and "--resolution 32 differs" in result.output


def test_snapshot_that_is_not_ours_is_a_clear_error(tmp_path):
    (tmp_path / "latest.pt").write_bytes(b"garbage")
    result = CliRunner().invoke(main, ["generate", str(tmp_path)])
    assert result.exit_code != 0 and "not a readable ganforge snapshot" in result.output


def test_export_onnx_matches_pytorch(run_dir, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    from ganforge.inference import RuntimeGenerator, load_model

    out = tmp_path / "g.onnx"
    result = CliRunner().invoke(main, ["export", str(run_dir), "--format", "onnx", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}:" in result.output and list(tmp_path.iterdir()) == [out]  # one file, named
    z = torch.randn(7, 100, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(7) % 10
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (images,) = session.run(None, {"z": z.numpy(), "labels": labels.numpy()})
    expected = RuntimeGenerator(load_model(run_dir))(z, labels)
    assert images.shape == (7, 1, 16, 16)
    np.testing.assert_allclose(images, expected.numpy(), atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit")
def test_export_torchscript_runs_without_ganforge_classes(run_dir, tmp_path):
    from ganforge.inference import RuntimeGenerator, load_model

    out = tmp_path / "g.pt"
    assert CliRunner().invoke(main, ["export", str(run_dir), "--format", "torchscript", "--out", str(out)]).exit_code == 0
    scripted = torch.jit.load(str(out))
    z, labels = torch.randn(3, 100), torch.tensor([0, 5, 9])
    torch.testing.assert_close(scripted(z, labels), RuntimeGenerator(load_model(run_dir))(z, labels))


def test_resume_with_another_model_or_a_tampered_snapshot_is_refused(run_dir, tmp_path):
    result = CliRunner().invoke(main, ["train", "--resume", str(run_dir), "--model", "began"])
    assert result.exit_code != 0 and "--model 'began' differs from the run's 'cdcgan'" in result.output
    snap = torch.load(run_dir / "latest.pt", weights_only=True)
    snap["model_config"]["resolution"] = 64  # weights of 16x16 networks labelled as 64x64
    torch.save(snap, tmp_path / "tampered.pt")
    result = CliRunner().invoke(main, ["generate", str(tmp_path / "tampered.pt"), "--out", str(tmp_path / "x.png")])
    assert result.exit_code != 0 and "does not match the cdcgan networks" in result.output
    assert "Traceback" not in result.output


def test_dry_run_states_the_pggan_schedule_and_warns_when_kimg_ends_early(tmp_path):
    (tmp_path / "photos").mkdir()
    for i in range(2):  # full-size images: the digits (28 px) would be refused at 64x64
        Image.new("RGB", (64, 64), (i * 100, 0, 0)).save(tmp_path / "photos" / f"{i}.png")
    args = ["train", "--dry-run", "--model", "pggan", "--data", str(tmp_path / "photos"), "--outdir", str(tmp_path / "r")]
    short = CliRunner().invoke(main, [*args, "--resolution", "64"])  # v2: 600 kimg at 4x4 alone
    assert short.exit_code == 0, short.output
    assert "warning: the run stays at 4x4: --kimg 100 ends before the target 64x64" in short.output
    assert '"batch": null' in short.output and "batch: set per resolution by the model" in short.output
    grown = CliRunner().invoke(main, [*args, "--resolution", "32", "--model-opt", "preset=cpu", "--kimg", "70"])
    assert ("schedule: 4x4 stable from 0 kimg (batch 32); 8x8 fade from 10 kimg (batch 32); 8x8 stable from 20 kimg "
            "(batch 32); 16x16 fade from 30 kimg (batch 32)") in grown.output
    assert "32x32 stable from 60 kimg" in grown.output and "warning" not in grown.output
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_ctrl_c_during_training_keeps_a_snapshot_and_exits_130(tmp_path):
    import sys

    from conftest import interrupted_training

    command = [sys.executable, "-m", "ganforge", "train", "--resolution", "16", "--batch", "16", "--base-channels", "8",
               "--kimg", "50", "--tick", "0.032", "--outdir", str(tmp_path), "--quiet"]
    result, seconds = interrupted_training(command, tmp_path / "00000-cdcgan-mnist")
    out, err = result.stdout, result.stderr
    assert result.returncode == 130 and seconds < 5, (result.returncode, err[-2000:])
    assert "continue with: ganforge train --resume" in out + err and "Traceback" not in err
    assert "run directory:" not in out  # one line: the resume line names the run
    assert (tmp_path / "00000-cdcgan-mnist" / "latest.pt").exists()


def test_gpus_without_the_gpus_is_one_clear_line_before_any_launch(tmp_path):
    result = CliRunner().invoke(main, ["train", "--gpus", "64", "--outdir", str(tmp_path)])
    assert result.exit_code == 2 and "64 processes need 64 GPUs" in result.output and "Traceback" not in result.output


def test_evaluate_keeps_its_results_in_the_run_and_the_studio_shows_them(run_dir, tmp_path):
    import shutil

    from ganforge.studio import Studio

    run = shutil.copytree(run_dir, tmp_path / "runs" / run_dir.name)
    result = CliRunner().invoke(main, ["evaluate", str(run), "--metrics", "swd", "--n", "64", "--no-floor",
                                       "--out", str(tmp_path / "copy.json")])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (run / "metric-swd.jsonl").read_text().splitlines()]
    copy = json.loads((tmp_path / "copy.json").read_text())
    from ganforge.snapshots import load_snapshot

    assert len(rows) == 1 and rows[0]["snapshot"] == "latest.pt"
    assert rows[0]["kimg"] == load_snapshot(run)["images_seen"] / 1000  # the kimg of the snapshot measured
    assert rows[0]["swd_avg_x1e3"] == copy["swd"]["swd_avg_x1e3"]
    _, metrics = Studio([tmp_path / "runs"]).details(f"runs/{run_dir.name}")
    assert metrics["swd"]["swd_avg_x1e3"] == copy["swd"]["swd_avg_x1e3"]
    # a kept snapshot keeps its results beside it too, at its own kimg
    snapshot = next(run.glob("snapshot-*.pt"))
    result = CliRunner().invoke(main, ["evaluate", str(snapshot), "--metrics", "swd", "--n", "64", "--no-floor"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "metric-swd.jsonl").read_text().splitlines()[-1])["snapshot"] == snapshot.name


def test_evaluating_a_snapshot_outside_any_run_says_where_its_results_are(run_dir, tmp_path):
    import shutil

    lone = shutil.copy(run_dir / "latest.pt", tmp_path / "lone.pt")
    result = CliRunner().invoke(main, ["evaluate", str(lone), "--metrics", "swd", "--n", "64", "--no-floor"])
    assert result.exit_code == 0, result.output
    assert "not in a run directory: the results are not kept (give --out FILE to keep them)" in result.output
    assert not list(tmp_path.glob("metric-*.jsonl"))


@pytest.mark.parametrize("command,interrupt,said,not_said", [
    (["evaluate", "RUN", "--metrics", "swd", "--n", "64"], "ganforge.metrics.evaluate.Evaluator.evaluate_model",
     "interrupted: the blocks of images measured so far are kept in the cache folder", "latest.pt"),
    (["dataset", "RUN", "OUT/small.zip", "--resolution", "8"], "ganforge.archive.png_bytes",
     "interrupted: nothing was written (a conversion is written whole or not at all)", "metric"),
])
def test_ctrl_c_is_one_line_about_what_the_command_was_doing(run_dir, tmp_path, monkeypatch, command, interrupt,
                                                            said, not_said):
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(interrupt, ctrl_c)
    source = str(run_dir) if command[0] == "evaluate" else str(tmp_path / "photos")
    if command[0] == "dataset":
        (tmp_path / "photos").mkdir()
        for i in range(2):
            Image.new("RGB", (8, 8), (i * 100, 0, 0)).save(tmp_path / "photos" / f"{i}.png")
    args = [source if a == "RUN" else a.replace("OUT", str(tmp_path)) for a in command]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 130
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(said) and not_said not in lines[0], result.output


def test_sigterm_during_evaluate_is_the_same_one_line_as_ctrl_c_and_writes_nothing(run_dir, tmp_path):
    """`kill PID` (a scheduler's stop) while evaluate measures: its interrupt line and 143, not a silent end."""
    import os
    import subprocess
    import sys

    script = ("import os, signal, time\n"
              "from ganforge.metrics.evaluate import Evaluator\n"
              "def killed(*args, **kwargs):\n"
              "    os.kill(os.getpid(), signal.SIGTERM)\n"
              "    time.sleep(30)\n"
              "Evaluator.evaluate_model = killed\n"
              "from ganforge.cli import main\n"
              "main(['evaluate', os.environ['RUN'], '--metrics', 'swd', '--n', '64', '--out', os.environ['OUT']])\n")
    out = tmp_path / "results.json"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "RUN": str(run_dir), "OUT": str(out), "GANFORGE_PROGRESS": "0"})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 143, result.stderr  # 128 + SIGTERM, as a shell reports it
    assert lines[-1] == ("interrupted: the blocks of images measured so far are kept in the cache folder (the run's "
                         "metric-cache/ or --cache-dir); the same command continues from them"), result.stderr
    assert "Traceback" not in result.stderr and not list(tmp_path.iterdir())


def test_info_says_how_far_a_progressive_run_has_grown_when_short_of_its_resolution(tmp_path):
    run = tmp_path / "00000-pggan-emoji"
    run.mkdir()
    (run / "training_options.json").write_text(json.dumps({"model": "pggan", "data": "emoji", "resolution": 32,
                                                           "kimg": 1.0}))
    rows = [{"kimg": 0.5, "step": 16, "time": 1.0, "resolution": 4}, {"kimg": 1.0, "step": 32, "time": 2.0, "resolution": 4}]
    (run / "stats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    described = CliRunner().invoke(main, ["info", str(run)])
    assert described.exit_code == 0, described.output
    assert "model:      pggan on emoji at 32x32 (grown to 4x4 so far)\n" in described.output, described.output
    (run / "stats.jsonl").write_text("".join(json.dumps({**r, "resolution": 32}) + "\n" for r in rows))
    assert "model:      pggan on emoji at 32x32\n" in CliRunner().invoke(main, ["info", str(run)]).output


def test_a_finished_run_says_what_next_and_runs_and_info_describe_it(tmp_path):
    from ganforge import __version__

    assert CliRunner().invoke(main, ["--version"]).output.strip() == f"ganforge {__version__}"
    result = CliRunner().invoke(main, ["train", *TINY, "--outdir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    run = tmp_path / "00000-cdcgan-mnist"
    lines = result.output.strip().splitlines()
    assert lines[-5:-3] == [f"run directory: {run}", "next:"]
    assert lines[-3].split() == ["ganforge", "generate", str(run), "--n", "16", "--out", str(run / "samples.png")]
    assert lines[-2].split()[:3] == ["ganforge", "evaluate", str(run)] and lines[-1].split()[:3] == ["ganforge", "studio", str(tmp_path)]
    assert lines[-2].endswith("# fid, kid, pr too, with the [metrics] extra"), lines[-2]  # not is: it needs logits
    generated = CliRunner().invoke(main, lines[-3].split()[1:])  # the printed command works as printed
    assert generated.exit_code == 0 and (run / "samples.png").exists(), generated.output
    assert json.loads((run / "training_options.json").read_text())["processes"] == 1
    assert (run / "log.txt").read_text().splitlines()[0].endswith("parameters, 1 process")

    listed = CliRunner().invoke(main, ["runs", str(tmp_path)])
    assert listed.exit_code == 0, listed.output
    header, row = listed.output.strip().splitlines()
    assert header.split() == ["run", "model", "data", "kimg", "state", "last", "metric"]
    assert row.split() == [str(run), "cdcgan", "mnist", "0.064", "/", "0.064", "finished", "-"]
    evaluated = CliRunner().invoke(main, ["evaluate", str(run), "--metrics", "swd", "--n", "64", "--no-floor"])
    assert evaluated.exit_code == 0, evaluated.output
    row = CliRunner().invoke(main, ["runs", str(tmp_path)]).output.strip().splitlines()[1]
    value = json.loads(evaluated.stdout)["swd"]["swd_avg_x1e3"]
    assert row.endswith(f"finished  swd {value:.4g} at 0.064 kimg"), row
    described = CliRunner().invoke(main, ["info", str(run)])
    assert described.exit_code == 0, described.output
    assert "progress:   0.064 of 0.064 kimg, finished" in described.output
    assert "processes:  1" in described.output and "metric:     swd at 0.064 kimg: swd " in described.output
    assert "latest.pt" in described.output
    assert "run_id" not in described.output  # the options that differ from the defaults: set by the user, not the run's id
    empty = CliRunner().invoke(main, ["runs", str(tmp_path / "none")])
    assert empty.exit_code != 0 and "no runs here" in empty.output


def test_runs_and_info_give_a_run_stopped_between_ticks_the_kimg_of_its_snapshot(run_dir, tmp_path):
    # Ctrl-C before the first tick leaves latest.pt and no stats row: "0 / 5" said the run never
    # started, where --resume continues from the snapshot's kimg.
    import shutil

    stopped = shutil.copytree(run_dir, tmp_path / "runs" / "00000-cdcgan-mnist")
    (stopped / "stats.jsonl").write_text("")
    options = json.loads((stopped / "training_options.json").read_text())
    (stopped / "training_options.json").write_text(json.dumps({**options, "kimg": 5}))
    from ganforge.snapshots import load_snapshot

    kimg = f"{load_snapshot(stopped)['images_seen'] / 1000:g}"  # the module's run, where earlier tests left it
    row = CliRunner().invoke(main, ["runs", str(tmp_path / "runs")]).output.strip().splitlines()[1]
    assert row.split()[2:6] == ["mnist", kimg, "/", "5"] and "stopped" in row, row
    described = CliRunner().invoke(main, ["info", str(stopped)]).output
    assert f"progress:   {kimg} of 5 kimg, stopped, last wrote " in described, described


def test_output_piped_into_a_reader_that_stops_early_ends_quietly(run_dir):
    # `ganforge runs | head -1`: the reader goes away, the next write fails with EPIPE; that is no
    # bug to report, and no traceback.
    import os
    import subprocess
    import sys
    from pathlib import Path

    checkout = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen([sys.executable, "-m", "ganforge", "info", str(run_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": checkout})
    proc.stdout.close()  # gone before ganforge (still importing) writes its first line
    err = proc.communicate(timeout=120)[1]
    assert "unexpected error" not in err and "Traceback" not in err and "Exception ignored" not in err, err
    assert proc.returncode == 141, err  # 128 + SIGPIPE, what a shell reports of a writer whose reader left


def test_dry_run_refuses_what_a_real_start_would_refuse(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.new("RGB", (12, 12), (i * 80, 0, 0)).save(photos / f"{i}.png")
    for args, message in [
        (["--data", str(tmp_path / "missing")], f"--data {tmp_path / 'missing'}: no such file or folder"),
        (["--data", str(photos)], "--model cdcgan needs labelled data"),
        (["--model", "pggan", "--data", str(photos), "--resolution", "16"], "is smaller (12x12 px)"),
        (["--model", "dfgan", "--data", str(photos)], f"--model dfgan needs captions: --data {photos} has no text/"),
    ]:
        result = CliRunner().invoke(main, ["train", "--dry-run", "--outdir", str(tmp_path / "runs"), *args])
        assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output, result.output
    fine = CliRunner().invoke(main, ["train", "--dry-run", "--model", "dcgan", "--data", str(photos), "--resolution", "8",
                                     "--outdir", str(tmp_path / "runs")])
    assert fine.exit_code == 0 and json.loads(fine.output)["data"] == str(photos), fine.output
    assert not (tmp_path / "runs").exists()

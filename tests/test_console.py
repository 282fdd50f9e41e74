"""What a user sees on the console of a real `ganforge` process: bars, tick lines, warnings."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TINY = ["--resolution", "16", "--batch", "16", "--base-channels", "8", "--kimg", "0.064", "--tick", "0.032",
        "--sample-every", "0.064", "--snap", "0.064"]


def ganforge(*args, progress=None, cwd=None) -> subprocess.CompletedProcess:
    """`python -m ganforge ARGS` with stdout and stderr piped (not a terminal), from this checkout;
    `progress`: GANFORGE_PROGRESS (default: unset)."""
    environment = {k: v for k, v in os.environ.items() if k != "GANFORGE_PROGRESS"}
    environment["PYTHONPATH"] = str(REPO)
    if progress is not None:
        environment["GANFORGE_PROGRESS"] = progress
    result = subprocess.run([sys.executable, "-m", "ganforge", *args], capture_output=True, env=environment, cwd=cwd,
                            timeout=300)
    # decoded by hand: text mode would turn a bar's carriage returns into newlines
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(), result.stderr.decode())


@pytest.fixture
def photos_with_a_bad_file(tmp_path):
    """An unlabelled folder of 24 small colour images and one file that is no image."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def test_a_piped_run_prints_tick_lines_and_no_bar(tmp_path):
    result = ganforge("train", *TINY, "--outdir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "\r" not in result.stderr and "%|" not in result.stderr  # no bar redraws in a log
    ticks = [line for line in result.stderr.splitlines() if line.startswith("kimg ")]
    assert len(ticks) == 2 and "img/s" in ticks[0]


def test_ganforge_progress_decides_the_bar(tmp_path):
    shown = ganforge("train", *TINY, "--outdir", str(tmp_path / "a"), progress="1")
    assert shown.returncode == 0 and "\r" in shown.stderr and "%|" in shown.stderr
    hidden = ganforge("train", *TINY, "--outdir", str(tmp_path / "b"), progress="0")
    assert hidden.returncode == 0 and "\r" not in hidden.stderr and "%|" not in hidden.stderr


def test_quiet_hides_the_progress_but_keeps_the_warnings(tmp_path, photos_with_a_bad_file):
    # PGGAN's cpu preset at 16x16 for 32 images stays at 4x4: a warning, as is the skipped file
    result = ganforge("train", "--model", "pggan", "--data", str(photos_with_a_bad_file), "--resolution", "16",
                      "--model-opt", "preset=cpu", "--batch", "8", "--kimg", "0.032", "--tick", "0.016",
                      "--outdir", str(tmp_path), "--quiet", progress="1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "warning: the run stays at 4x4" in result.stderr
    assert result.stderr.count("unreadable") == 1 and "warning: skipped 1 unreadable image(s)" in result.stderr
    assert "UserWarning" not in result.stderr and "warnings.warn" not in result.stderr
    assert not any(line.startswith("kimg ") for line in result.stderr.splitlines())  # no tick lines
    assert "%|" not in result.stderr and "\r" not in result.stderr  # no bars, the data's decoding included


def test_skipped_files_are_one_ganforge_line_in_any_command(photos_with_a_bad_file):
    result = ganforge("evaluate", "--fake", str(photos_with_a_bad_file), "--real", str(photos_with_a_bad_file),
                      "--metrics", "swd")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "UserWarning" not in result.stderr and "ds.preload()" not in result.stderr
    assert f"warning: {photos_with_a_bad_file}: skipped 1 unreadable image(s)" in result.stderr


def test_the_readme_small_datasets_commands_work_as_written_on_a_plain_folder_of_photos(tmp_path):
    from click.testing import CliRunner

    from ganforge.cli import main

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Small datasets")[1].split("\n## ")[0]
    commands = [line.split("#")[0].split() for line in section.splitlines() if line.startswith("    ganforge train")]
    assert len(commands) == 4
    photos = tmp_path / "my_500_photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(photos / f"IMG_{i:04d}.jpg")
    for words in commands:
        args = [str(photos) if w == "my_500_photos/" else w for w in words[1:]]
        result = CliRunner().invoke(main, [*args, "--dry-run", "--outdir", str(tmp_path / "runs")])
        assert result.exit_code == 0, (words, result.output)


def test_messages_tell_the_truth_about_labels_and_splits(tmp_path, photos_with_a_bad_file):
    from click.testing import CliRunner

    from ganforge.cli import main

    result = CliRunner().invoke(main, ["train", "--model", "dcgan", "--data", str(photos_with_a_bad_file), "--resolution",
                                       "8", "--batch", "8", "--base-channels", "4", "--kimg", "0.008", "--tick", "0.008",
                                       "--quiet", "--outdir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    first = (tmp_path / "runs" / "00000-dcgan-photos" / "log.txt").read_text().splitlines()[0]
    assert ", 24 images, unlabelled, " in first and "0 classes" not in first
    captioned = tmp_path / "birds"
    (captioned / "images").mkdir(parents=True)
    (captioned / "text").mkdir()
    (captioned / "classes.txt").write_text("bird\n")
    rows = ["image,label,split"]
    for i in range(6):
        Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(captioned / "images" / f"{i}.png")
        (captioned / "text" / f"{i}.txt").write_text(f"bird {i}\n")
        rows.append(f"images/{i}.png,0,{'test' if i >= 4 else 'train'}")
    (captioned / "split.csv").write_text("\n".join(rows) + "\n")
    result = CliRunner().invoke(main, ["evaluate", "--fake", str(photos_with_a_bad_file), "--real", str(captioned),
                                       "--split", "test", "--metrics", "swd", "--n", "2", "--resolution", "16"])
    assert result.exit_code == 0, result.output
    assert "real images: 2 of the test split of" in result.output
    trained = CliRunner().invoke(main, ["train", "--model", "dcgan", "--data", str(captioned), "--resolution", "8",
                                        "--batch", "4", "--base-channels", "4", "--kimg", "0.004", "--quiet",
                                        "--outdir", str(tmp_path / "runs")])
    assert trained.exit_code == 0, trained.output
    first = (tmp_path / "runs" / "00001-dcgan-birds" / "log.txt").read_text().splitlines()[0]
    assert ", 4 images of the train split, 1 class (unused" in first, first  # of 6: which rows it trains on


def test_a_notebook_shows_bars_through_tqdm_auto(monkeypatch):
    import io
    import types

    from tqdm.auto import tqdm

    from ganforge import progress

    monkeypatch.delenv("GANFORGE_PROGRESS", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a kernel's stderr is no terminal
    assert not progress.enabled()
    monkeypatch.setitem(sys.modules, "ipykernel.zmqshell", types.ModuleType("ipykernel.zmqshell"))
    assert progress.enabled()
    with progress.bar(3, "walk frames") as shown:
        assert isinstance(shown, tqdm) and not shown.disable
    monkeypatch.setenv("GANFORGE_PROGRESS", "0")
    assert not progress.enabled()


@pytest.mark.parametrize("model,extra", [("cdcgan", {"base_channels": 8}), ("began", {"base_channels": 4}),
                                         ("pggan", {"preset": "cpu"})])
def test_a_console_without_a_bar_hears_of_the_run_before_its_first_tick(tmp_path, monkeypatch, capsys, model, extra):
    """A run whose first tick is minutes off (BEGAN at 64x64 on a CPU: 1 kimg) says how it goes a few
    seconds into its steps, whatever the model; here after its first step, the few
    seconds set to none."""
    from ganforge.training import TrainOptions, train

    monkeypatch.setenv("GANFORGE_PROGRESS", "0")  # no bar: the console of a pipe or a log
    monkeypatch.setattr("ganforge.training.runlog.FIRST_LINE_AFTER", 0.0, raising=False)
    train(TrainOptions(model=model, data="mnist", resolution=16, batch=8, model_opts=extra, kimg=0.032, tick=1,
                       sample_every=1, snap=1, outdir=str(tmp_path)), progress=True)
    lines = capsys.readouterr().err.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("first steps: "))
    tick = next(i for i, line in enumerate(lines) if line.startswith("kimg "))  # the only tick: the run's end
    assert first < tick and lines[first].startswith("first steps: 0.008 of 0.032 kimg in "), lines[first]
    assert "img/s; at this speed the first tick line comes in about 0:" in lines[first]
    assert sum(line.startswith("first steps: ") for line in lines) == 1

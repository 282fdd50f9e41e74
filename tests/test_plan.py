"""How long a run will take: `train --plan` before it (writing nothing), the estimate a run logs at
the first tick of each period, and the arithmetic both share (images per period, as the loop steps)."""

import json
import re
import shutil

from click.testing import CliRunner

from ganforge.cli import main
from ganforge.models import build_model
from ganforge.training import TrainOptions, train
from ganforge.training.options import period_name, run_periods

# PGGAN from 4x4 into the fade-in of 16x16: four periods whose lengths are not whole batches of 16.
TINY_PGGAN = dict(model="pggan", data="mnist", resolution=16, batch=16, kimg=0.14,
                  model_opts={"preset": "cpu", "fmap_max": 8, "fade_kimg": 0.05, "stab_kimg": 0.03})


def tiny_pggan_model():
    opts = TrainOptions(**TINY_PGGAN)
    return build_model("pggan", dict(resolution=16, channels=1, num_classes=0, **opts.model_opts)), opts


def test_plan_prints_a_row_per_phase_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["train", "--plan", "--model", "pggan", "--data", "mnist", "--resolution", "16", "--batch", "16",
            "--kimg", "0.14", "--outdir", str(tmp_path / "runs")]
    for key, value in TINY_PGGAN["model_opts"].items():
        args += ["--model-opt", f"{key}={value}"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = {line.split("  ")[0].strip(): line.split() for line in result.output.splitlines()
            if re.match(r"\d+x\d+ (fade|stable)", line)}
    model, opts = tiny_pggan_model()
    assert {name: int(row[2].replace(",", "")) for name, row in rows.items()} == \
        {p.name: p.images for p in run_periods(model, opts)}
    assert list(rows) == ["4x4 stable", "8x8 fade", "8x8 stable", "16x16 fade"]
    assert all(re.fullmatch(r"\d+:\d\d:\d\d", row[-1]) and row[-2] == "GiB" for row in rows.values())
    assert re.search(r"^whole run: about \d+:\d\d:\d\d", result.output, re.M)
    assert "periodic work, estimated" in result.output
    assert list(tmp_path.iterdir()) == []  # no run directory, nothing else either


def test_plan_warns_of_a_run_that_ends_before_its_resolution_as_the_run_would(tmp_path):
    # The table showed one "4x4 stable" row and a wall time, and no word that the 16x16 asked for is
    # never reached: the real start (and --dry-run) warn of it.
    args = ["train", "--plan", "--model", "pggan", "--data", "mnist", "--resolution", "16", "--batch", "16",
            "--kimg", "0.02", "--outdir", str(tmp_path / "runs")]
    for key, value in TINY_PGGAN["model_opts"].items():
        args += ["--model-opt", f"{key}={value}"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "warning: the run stays at 4x4: --kimg 0.02 ends before the target 16x16" in result.output, result.output


def test_plan_refuses_resume_in_one_line(tmp_path):
    result = CliRunner().invoke(main, ["train", "--plan", "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "--plan times a new run" in result.output and "Traceback" not in result.output


def test_images_per_period_are_those_the_loop_trains(tmp_path):
    """The plan's arithmetic against a real run that logs every step (a stats row per step gives the
    schedule each step ran with), and against asking the schedule at every step."""
    run_dir = train(TrainOptions(**TINY_PGGAN, tick=0.001, outdir=str(tmp_path)), progress=False)
    rows = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    trained: dict[str, int] = {}
    for row in rows:
        name = f"{row['resolution']}x{row['resolution']} {'fade' if row['alpha'] < 1 else 'stable'}"
        trained[name] = trained.get(name, 0) + row["batch"]
    model, opts = tiny_pggan_model()
    planned = run_periods(model, opts)
    assert [(p.name, p.images) for p in planned] == list(trained.items())
    assert sum(p.steps for p in planned) == len(rows)
    model.period_starts = lambda batch, resolution: None  # not stated: the schedule is asked at every step
    assert [(p.name, p.start, p.steps) for p in run_periods(model, opts)] == \
        [(p.name, p.start, p.steps) for p in planned]
    # The run logged its estimate at the first tick of each period.
    log = (run_dir / "log.txt").read_text()
    assert len(re.findall(r"^estimate: the whole run about \d+:\d\d:\d\d", log, re.M)) == len(planned)


def test_the_first_tick_logs_the_whole_run_estimate(tmp_path):
    run_dir = train(TrainOptions(data="mnist", resolution=16, batch=16, kimg=0.064, tick=0.032,
                                 model_opts={"base_channels": 8}, outdir=str(tmp_path)), progress=False)
    lines = (run_dir / "log.txt").read_text().splitlines()
    first_tick = next(i for i, line in enumerate(lines) if line.startswith("kimg"))
    assert re.match(r"estimate: the whole run about \d+:\d\d:\d\d, \d+:\d\d:\d\d left \(ends about \d\d:\d\d UTC\), "
                    r"from [\d,.]+ img/s measured in 16x16 train", lines[first_tick + 1])
    assert sum(line.startswith("estimate:") for line in lines) == 1  # one period: one estimate


def test_the_estimate_counts_the_time_of_every_step_it_counts_the_images_of():
    """A tick of one step: the rate is that step's images over its time (the first step's time was
    left out while its images counted, and a one-step tick reported hundreds of thousands of img/s)."""
    import time

    from ganforge.training.estimate import RunTimer

    opts = TrainOptions(data="mnist", resolution=16, batch=16, kimg=0.032, tick=0.016, model_opts={"base_channels": 8})
    model = build_model("cdcgan", dict(resolution=16, channels=1, num_classes=10, base_channels=8))
    timer = RunTimer.for_run(time.perf_counter(), model, opts, 0)
    with timer.work("grid"):
        pass
    time.sleep(0.2)  # the first step
    timer.stepped("16x16 train", 16)
    with timer.work("tick"):
        pass
    rate = float(re.search(r"from ([\d,.]+) img/s", timer.estimate_line(16, lambda: 0.0))[1].replace(",", ""))
    assert 40 < rate <= 80  # 16 images in a little over 0.2 s


def test_period_names_of_a_fixed_schedule():
    model = build_model("cdcgan", dict(resolution=16, channels=1, num_classes=10))
    opts = TrainOptions(resolution=16, batch=64, kimg=1)
    (only,) = run_periods(model, opts)
    assert (only.name, only.start, only.steps, only.images) == ("16x16 train", 0, 16, 1024)
    assert period_name(only.schedule) == "16x16 train"


def test_evaluate_states_its_estimate_before_the_feature_passes(finished_runs, tmp_path):
    # a copy: evaluate keeps its results in the run, and other tests read the shared run's metrics
    run = shutil.copytree(next((finished_runs / "done").glob("*cdcgan*")), tmp_path / "run")
    result = CliRunner().invoke(main, ["evaluate", str(run), "--metrics", "swd,msssim", "--n", "384", "--no-floor",
                                       "--cache-dir", str(tmp_path / "estimate-cache")])
    assert result.exit_code == 0, result.output
    assert "evaluate: 384 generated images to make (or read) and measure, 384 real ones to measure" in result.stderr
    for side in ("real", "generated"):
        assert re.search(rf"^{side} side: 384 images; the first 128 took [\d.]+ s \([\d,.]+ img/s\): about "
                         r"\d+:\d\d:\d\d more for this side$", result.stderr, re.M)
    assert result.output.index("generated side: 384") < result.output.index('"swd"')  # before the results


def test_pggan_period_starts_give_the_periods_of_asking_every_step():
    for preset, kimg, batch in (("cpu", 70, None), ("cpu", 33.3, 24), ("v2", 4000, None)):
        model = build_model("pggan", dict(resolution=32, channels=3, num_classes=0, preset=preset))
        opts = TrainOptions(model="pggan", resolution=32, kimg=kimg, batch=batch)
        stated = run_periods(model, opts)
        model.period_starts = lambda batch, resolution: None
        assert [(p.name, p.start, p.steps) for p in run_periods(model, opts)] == \
            [(p.name, p.start, p.steps) for p in stated]
    assert [p.name for p in stated] == ["4x4 stable", "8x8 fade", "8x8 stable", "16x16 fade", "16x16 stable",
                                        "32x32 fade", "32x32 stable"]

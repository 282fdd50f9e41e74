"""The metric contract: a metric declared outside ganforge (here, in a plug-in module this test writes)
is measured by `ganforge evaluate`, kept by a run that trains with it (its metric-<name>.jsonl, best.pt
chosen by it), charted by `plot`, listed by `runs` and shown by the studio, with no edit to shared code.

The toy metric keeps its own per-block summary of both sides (each image's mean pixel value) and
reports how far the generated images' mean is from the reals'.
"""

import importlib
import json
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import ganforge
from ganforge.cli import main
from ganforge.errors import OptionError
from ganforge.metrics import PLUGIN_ENV, load_plugins, registered, unregister

PLUGIN = '''
"""A toy metric: how far the generated images' mean brightness is from the reals'."""
from ganforge.metrics import metric


def mean_brightness(ev, block):
    return block.images.double().flatten(1).mean(dim=1)  # one value an image


@metric("brightness", "gap", lower_is_better=True, summary=mean_brightness, real_side=True)
def brightness_gap(ev, fakes, real):
    generated, reals = fakes.cat("brightness").mean().item(), real.cat("brightness").mean().item()
    return {"gap": abs(generated - reals), "generated": generated, "real": reals}
'''
CHECKOUT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The plug-in's folder: the toy metric is registered in this process while the module's tests
    run, and removed after them."""
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "toy_brightness.py").write_text(PLUGIN)
    sys.path.insert(0, str(folder))
    importlib.import_module("toy_brightness")
    yield folder
    unregister("brightness")
    sys.modules.pop("toy_brightness", None)
    sys.path.remove(str(folder))


def grey_folder(folder: Path, value: int, count: int = 20) -> Path:
    folder.mkdir()
    for i in range(count):
        Image.new("L", (16, 16), value + i % 2).save(folder / f"{i:03d}.png")  # mean: value + 0.5
    return folder


def test_evaluate_measures_a_plugin_metric_in_its_own_process(plugin, tmp_path):
    fake, real = grey_folder(tmp_path / "fake", 160), grey_folder(tmp_path / "real", 100)
    env = {"PYTHONPATH": os.pathsep.join([str(CHECKOUT), str(plugin)]), PLUGIN_ENV: "toy_brightness"}
    shown = ganforge("evaluate", "--help", env=env)
    assert "brightness" in shown.stdout, shown.stdout
    done = ganforge("evaluate", "--fake", fake, "--real", real, "--metrics", "brightness", "--n", "20", "--out",
                    tmp_path / "r.json", env=env)
    assert done.returncode == 0, done.stderr
    measured = json.loads((tmp_path / "r.json").read_text())["brightness"]
    assert measured["gap"] == 60 and measured["generated"] == 160.5 and measured["n_fake"] == 20
    assert measured["protocol"]["n_generated"] == 20 and measured["protocol"]["real_data"] == str(real.resolve())
    unnamed = ganforge("evaluate", "--help", env={"PYTHONPATH": env["PYTHONPATH"]})  # the plug-in not named
    assert unnamed.returncode == 0 and "brightness" not in unnamed.stdout and "rprec" in unnamed.stdout


def test_a_run_trains_with_a_plugin_metric_keeps_best_by_it_plots_and_shows_it(plugin, tmp_path):
    from ganforge.snapshots import load_snapshot
    from ganforge.training.plots import metric_series

    runner = CliRunner()
    done = runner.invoke(main, ["train", "--data", "mnist", "--resolution", "16", "--batch", "16", "--base-channels", "8",
                                "--kimg", "0.128", "--tick", "0.064", "--sample-every", "0.128", "--snap", "0.128",
                                "--metrics", "swd,brightness", "--best-metric", "brightness", "--metrics-every",
                                "0.032", "--metrics-n", "32", "--outdir", str(tmp_path), "--quiet"])
    assert done.exit_code == 0, done.output
    run = next(p for p in tmp_path.iterdir() if p.is_dir())
    rows = [json.loads(line) for line in (run / "metric-brightness.jsonl").read_text().splitlines()]
    assert [r["kimg"] for r in rows] == [0.032, 0.064, 0.096, 0.128] and all(r["real"] > 0 for r in rows)
    assert {(r["protocol"]["n_generated"], r["protocol"]["real_data"]) for r in rows} == {(32, "mnist")}
    best = min(rows, key=lambda r: r["gap"])
    assert load_snapshot(run / "best.pt")["images_seen"] == round(best["kimg"] * 1000)
    assert f"best.pt: brightness {best['gap']:.4g} at" in (run / "log.txt").read_text()

    plotted = runner.invoke(main, ["plot", str(run)])
    assert plotted.exit_code == 0 and (run / "stats.png").exists(), plotted.output
    assert metric_series(run)["brightness"]["brightness:gap"] == ([r["kimg"] for r in rows], [r["gap"] for r in rows])

    listed = runner.invoke(main, ["runs", str(tmp_path)])
    assert f"{rows[-1]['gap']:.4g} at 0.128 kimg" in listed.output, listed.output

    pytest.importorskip("gradio", reason="the studio needs the [studio] extra")
    from ganforge.studio import Studio

    studio = Studio([tmp_path])
    options, metrics = studio.details(next(iter(studio.runs)))
    assert metrics["brightness"] == rows[-1] and options["metrics"] == ["swd", "brightness"]


def test_plugins_load_from_an_installed_packages_entry_point(tmp_path, monkeypatch):
    """A package installed with pip declares its module in the entry point group ganforge.metrics."""
    (tmp_path / "toy_entry.py").write_text(PLUGIN.replace('"brightness"', '"brightness2"'))
    info = tmp_path / "toy_entry-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-entry\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[ganforge.metrics]\nbrightness2 = toy_entry\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        load_plugins()
        assert registered()["brightness2"].headline == "gap"
    finally:
        unregister("brightness2")
        sys.modules.pop("toy_entry", None)


def test_a_plugin_that_is_not_there_is_named(monkeypatch):
    monkeypatch.setenv(PLUGIN_ENV, "toy_metric_nowhere")
    with pytest.raises(OptionError, match="GANFORGE_PLUGINS: no module toy_metric_nowhere on the Python path"):
        load_plugins()


def test_shared_code_names_no_metric():
    """The evaluator and the command line take every metric from the registry: no built-in metric's
    name appears in them as a string."""
    names = [name for name in registered() if name != "brightness"]
    for path in ("ganforge/metrics/evaluate.py", "ganforge/cli.py"):
        text = (CHECKOUT / path).read_text()
        quoted = [name for name in names if f'"{name}"' in text or f"'{name}'" in text]
        assert not quoted, f"{path} names {quoted}"

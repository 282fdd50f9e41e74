"""The Python API (`import ganforge`): the same images, results and messages as the commands."""

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import interrupted_training
from PIL import Image

import ganforge
from ganforge.cli import main
from ganforge.training import TrainOptions, train

TINY = dict(resolution=16, model_opts={"base_channels": 8}, tick=0.008, sample_every=0.032, snap=0.032)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three tiny runs: class-conditional (mnist), unconditional (a folder of images) and text-to-image."""
    root = tmp_path_factory.mktemp("api-runs")
    plain = root / "plain"
    plain.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(plain / f"{i}.png")
    return {"class": train(TrainOptions(data="mnist", batch=16, kimg=0.032, outdir=str(root), **TINY), progress=False),
            "plain": train(TrainOptions(model="dcgan", data=str(plain), batch=8, kimg=0.016, outdir=str(root), **TINY),
                           progress=False),
            "text": train(TrainOptions(model="dfgan", data="mnist-captions", resolution=16, batch=8, kimg=0.008,
                                       tick=0.008, model_opts={"nf": 4, "encoder_epochs": 1}, outdir=str(root)),
                          progress=False)}


def generate_command(*args) -> list[np.ndarray]:
    """The images `ganforge generate ARGS --out FOLDER` writes, in order."""
    out = args[-1]
    result = CliRunner().invoke(main, ["generate", *map(str, args[:-1]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return [np.asarray(Image.open(p)) for p in sorted(out.iterdir())]


def test_import_ganforge_does_not_import_torch():
    code = ("import sys, ganforge; ganforge.__version__, dir(ganforge); print('torch' in sys.modules); "
            "ganforge.load; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]  # torch comes with the first function used, not with the import


def test_sample_images_are_the_generate_command_s(runs, tmp_path):
    g = ganforge.load(runs["class"])
    for name, kwargs, args in (("one", dict(label=3, psi=0.7), ["--label", "3", "--psi", "0.7"]),
                               ("all", dict(), []), ("named", dict(label="3"), ["--label", "3"])):
        ours = [np.asarray(image) for image in g.sample_images(12, seed=7, **kwargs)]
        theirs = generate_command(runs["class"], "--n", 12, "--seed", 7, *args, tmp_path / name)
        assert len(ours) == 12 and all(np.array_equal(a, b) for a, b in zip(ours, theirs)), name
    images = g.sample(12, seed=7, label=3, psi=0.7)
    assert images.shape == (12, 1, 16, 16) and images.dtype == torch.float32 and images.abs().max() <= 1
    assert [np.asarray(i) for i in g.sample_images(12, seed=7, label=3, psi=0.7)][5].tolist() == \
        ((images[5, 0].clamp(-1, 1) * 127.5 + 127.5).round().to(torch.uint8)).numpy().tolist()


def test_prompted_samples_are_the_generate_command_s(runs, tmp_path):
    g = ganforge.load(runs["text"])
    ours = [np.asarray(image) for image in g.sample_images(4, seed=7, prompt="a handwritten digit three")]
    theirs = generate_command(runs["text"], "--n", 4, "--seed", 7, "--prompt", "a handwritten digit three", tmp_path / "t")
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
    z = g.noise(4, seed=7)
    assert torch.equal(g(z, ["a handwritten digit three"] * 4), g.sample(4, seed=7, prompt="a handwritten digit three"))
    assert torch.equal(g(z, "a handwritten digit three"), g(z, ["a handwritten digit three"] * 4))


def test_the_generator_is_a_module_of_the_ema_weights_called_on_noise_and_labels(runs):
    g = ganforge.load(runs["class"])
    assert isinstance(g, torch.nn.Module) and isinstance(g, ganforge.Generator)
    snapshot = torch.load(runs["class"] / "latest.pt", weights_only=True)["state"]
    weights = g.state_dict()
    assert weights and all(torch.equal(t, snapshot["G_ema." + k[len("G."):]]) for k, t in weights.items())
    assert len(weights) == sum(k.startswith("G_ema.") for k in snapshot)  # no D, no training G
    z, labels = g.noise(8, seed=3), torch.full((8,), 5)
    assert z.shape == (8, g.z_dim)
    with torch.no_grad():
        assert torch.equal(g(z, labels), g.sample(8, seed=3, label=5))
    exported = torch.export.export(g, (z, labels)).module()
    assert torch.allclose(exported(z, labels), g(z, labels), atol=1e-6)


def test_threads_sampling_one_generator_get_what_calls_in_turn_get(runs):
    g = ganforge.load(runs["class"])
    expected = {seed: g.sample(64, seed=seed) for seed in (1, 2)}
    got = {}

    def draw(seed):
        for _ in range(3):
            got.setdefault(seed, []).append(g.sample(64, seed=seed))

    threads = [threading.Thread(target=draw, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(image, expected[seed]) for seed in (1, 2) for image in got[seed])


@pytest.mark.parametrize("run,request_,args", [
    ("class", dict(label=10), ["--label", "10"]),
    ("class", dict(label="seven"), ["--label", "seven"]),
    ("class", dict(prompt="a bird"), ["--prompt", "a bird"]),
    ("plain", dict(label=3), ["--label", "3"]),
    ("text", dict(), []),
    ("text", dict(label=3, prompt="a bird"), ["--label", "3", "--prompt", "a bird"]),
    ("nowhere", dict(), []),
])
def test_a_request_the_run_cannot_answer_is_the_command_s_one_line(runs, tmp_path, run, request_, args):
    path = runs.get(run, tmp_path)  # tmp_path: a folder that is not a run
    with pytest.raises(ganforge.GanforgeError) as caught:
        ganforge.load(path).sample(4, **request_)
    message = str(caught.value)
    assert "\n" not in message
    result = CliRunner().invoke(main, ["generate", str(path), "--n", "4", *args, "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 1 and result.output.strip().splitlines()[-1] == f"Error: {message}", result.output


def test_train_from_python_gives_the_command_s_weights(tmp_path):
    options = ["--resolution", "16", "--batch", "8", "--base-channels", "8", "--kimg", "0.016", "--tick", "0.008",
               "--seed", "3", "--quiet"]
    result = CliRunner().invoke(main, ["train", *options, "--outdir", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    run = ganforge.train(resolution=16, batch=8, model_opts={"base_channels": 8}, kimg=0.016, tick=0.008, seed=3,
                         outdir=str(tmp_path / "api"), progress=False)
    assert isinstance(run, ganforge.Run) and run.finished and run.path == tmp_path / "api" / "00000-cdcgan-mnist"
    assert f"run directory: {tmp_path / 'cli' / '00000-cdcgan-mnist'}" in result.output
    ours, theirs = (torch.load(path / "latest.pt", weights_only=True) for path in (run.path, tmp_path / "cli" / "00000-cdcgan-mnist"))
    assert ours["state"].keys() == theirs["state"].keys()
    assert all(torch.equal(ours["state"][k], theirs["state"][k]) for k in ours["state"])
    assert ours["images_seen"] == theirs["images_seen"] == 16


def test_a_run_is_finished_when_its_snapshot_reached_its_kimg_whatever_its_log_holds(runs, tmp_path):
    import shutil

    run = ganforge.Run(shutil.copytree(runs["class"], tmp_path / "run"))  # 32 images seen of --kimg 0.032
    options = run.options

    def planned(kimg):
        (run.path / "training_options.json").write_text(json.dumps({**options, "kimg": kimg}))

    assert run.finished
    (run.path / "stats.jsonl").write_text("")  # a log without rows: the snapshot says how far the run got
    assert run.finished
    planned(0.064)
    assert not run.finished
    planned(0.0321)  # the loop ends at round(kimg * 1000) = 32 images, as this run did
    assert run.finished
    for snapshot in run.path.glob("*.pt"):
        snapshot.unlink()
    assert not run.finished  # nothing kept: nothing reached


@pytest.mark.parametrize("options,args", [
    (dict(resolution=30), ["--resolution", "30"]),
    (dict(kimg=float("nan")), ["--kimg", "nan"]),
    (dict(batch=0), ["--batch", "0"]),
    (dict(batch="many"), ["--batch", "many"]),
    (dict(model="stylegan9"), ["--model", "stylegan9"]),
    (dict(channels=2), ["--channels", "2"]),
    (dict(augment_p=1.5), ["--augment-p", "1.5"]),
    (dict(metrics=["swd", "nope"]), ["--metrics", "swd,nope"]),
    (dict(metrics="swd", best_metric="fid"), ["--metrics", "swd", "--best-metric", "fid"]),
    (dict(model_opts={"resolution": 64}), ["--model-opt", "resolution=64"]),
    (dict(data="/no/such/place"), ["--data", "/no/such/place"]),
])
def test_a_training_option_is_refused_with_the_command_s_words(tmp_path, options, args):
    with pytest.raises(ganforge.OptionError if "data" not in options else ganforge.GanforgeError) as caught:
        ganforge.train(outdir=str(tmp_path), progress=False, **options)
    result = CliRunner().invoke(main, ["train", *args, "--outdir", str(tmp_path), "--quiet"])
    assert result.exit_code != 0 and result.output.strip().splitlines()[-1] == f"Error: {caught.value}", result.output
    assert not list(tmp_path.iterdir())


def test_an_unknown_training_keyword_is_named_with_the_closest_options():
    with pytest.raises(ganforge.OptionError, match=r"^'kimgs' is not a training option; did you mean 'kimg'"):
        ganforge.train(kimgs=1)
    with pytest.raises(ganforge.OptionError, match=r"^'bogus' is not a training option; the options are model, data"):
        ganforge.train(bogus=1)


@pytest.mark.slow
def test_ctrl_c_stops_a_python_script_s_training_with_keyboard_interrupt_after_writing_latest_pt(tmp_path):
    import signal

    code = f"""if True:
        import ganforge
        try:
            ganforge.train(resolution=16, batch=16, model_opts={{'base_channels': 8}}, kimg=50, tick=0.032,
                           outdir={str(tmp_path)!r}, progress=False)
            print('trained')
        except KeyboardInterrupt as stopped:
            print('interrupted', stopped.run.finished, stopped.run.path.name)
            raise
        print('went on')"""
    result, _ = interrupted_training([sys.executable, "-c", code], tmp_path / "00000-cdcgan-mnist")
    assert result.returncode == -signal.SIGINT, result.stderr[-2000:]  # Python's end on an uncaught KeyboardInterrupt
    assert result.stdout.split() == ["interrupted", "False", "00000-cdcgan-mnist"]  # neither trained nor went on
    assert "continue with: ganforge train --resume" in result.stderr
    assert "KeyboardInterrupt: training stopped before its --kimg; latest.pt is written" in result.stderr
    assert torch.load(tmp_path / "00000-cdcgan-mnist" / "latest.pt", weights_only=True)["images_seen"] > 32


def without_seconds(results: dict) -> dict:
    """Results without their timings (the one part two evaluations need not share)."""
    if isinstance(results, dict):
        return {k: without_seconds(v) for k, v in results.items() if "seconds" not in k}
    return results


def test_evaluate_returns_what_the_command_writes_with_out(runs, tmp_path):
    result = CliRunner().invoke(main, ["evaluate", str(runs["class"]), "--metrics", "swd,msssim", "--n", "64",
                                       "--out", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "r.json").read_text())
    lines = []
    results = ganforge.evaluate(runs["class"], metrics=["swd", "msssim"], n=64, report=lines.append)
    assert without_seconds(results) == without_seconds(written) and results["swd"]["n"] == 64
    assert any(line.startswith("kept in the run: ") for line in lines)
    with pytest.raises(ganforge.OptionError) as caught:
        ganforge.evaluate(runs["class"], metrics="nope")
    refused = CliRunner().invoke(main, ["evaluate", str(runs["class"]), "--metrics", "nope"])
    assert refused.output.strip().splitlines()[-1] == f"Error: {caught.value}"


def test_evaluate_refuses_an_out_it_cannot_write_before_any_work(runs, tmp_path):
    kept = sorted(p.name for p in Path(runs["class"]).iterdir())
    lines = []
    for out, why in ((tmp_path, "is a folder; give a file name"),
                     (Path(runs["class"]) / "latest.pt", "is a file ganforge keeps in the run")):
        with pytest.raises(ganforge.OptionError, match=why):
            ganforge.evaluate(runs["class"], metrics="swd", n=64, out=out, report=lines.append)
    assert lines == [] and sorted(p.name for p in Path(runs["class"]).iterdir()) == kept  # nothing measured, nothing kept


def test_project_finds_what_the_command_finds(runs, tmp_path):
    from torchvision.utils import save_image

    g = ganforge.load(runs["class"])
    save_image(g.sample(1, seed=5, label=4) * 0.5 + 0.5, tmp_path / "target.png")
    result = CliRunner().invoke(main, ["project", str(runs["class"]), "--image", str(tmp_path / "target.png"),
                                       "--label", "4", "--steps", "5", "--video", "none", "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    found = ganforge.project(runs["class"], tmp_path / "target.png", steps=5, label=4)
    assert isinstance(found, ganforge.Projection) and found.latent.shape == (1, g.z_dim) and found.label == 4
    assert np.array_equal(found.latent.numpy(), np.load(tmp_path / "p" / "latent.npy"))
    figures = json.loads((tmp_path / "p" / "result.json").read_text())
    assert figures["final_loss"] == round(found.loss, 5) and figures["psnr_db"] == round(found.psnr_db, 2)
    assert len(found.losses) == 5 and found.image.shape == found.target.shape == (1, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(g(found.latent, torch.tensor([4])), found.image, atol=1e-6)
    with pytest.raises(ganforge.GanforgeError) as caught:
        ganforge.project(runs["plain"], tmp_path / "target.png", steps=1, label=2)
    assert str(caught.value) == "dcgan here is unconditional: drop --label and --prompt"


def test_project_takes_a_pil_image_or_an_image_tensor_as_it_takes_the_file(runs, tmp_path):
    from torchvision.utils import save_image

    sample = ganforge.load(runs["class"]).sample(1, seed=5, label=4)
    save_image(sample * 0.5 + 0.5, tmp_path / "target.png")  # RGB: the run's grey comes from converting it
    Image.open(tmp_path / "target.png").resize((40, 32)).save(tmp_path / "big.png")  # to crop and resize too
    from_file = ganforge.project(runs["class"], tmp_path / "big.png", steps=1, label=4)
    with Image.open(tmp_path / "big.png") as picture:
        grey = torch.from_numpy(np.array(picture.convert("L")))[None]  # uint8 [1, 32, 40], as read_image(GRAY)
        found = {kind: ganforge.project(runs["class"], image, steps=1, label=4)
                 for kind, image in (("PIL", picture), ("uint8", grey))}
    for kind, result in found.items():
        assert torch.equal(result.target, from_file.target) and torch.equal(result.latent, from_file.latent), kind
    assert torch.equal(ganforge.project(runs["class"], sample[0], steps=1, label=4).target, sample)  # unquantised
    for bad, words in ((torch.zeros(3, 16, 16), "tensor of shape (3, 16, 16); this run's images have 1 channel"),
                       (grey.float(), "float tensor with values from"), (grey.long(), "tensor of torch.int64")):
        with pytest.raises(ganforge.OptionError, match=r"^image: a " + words.replace("(", r"\(").replace(")", r"\)")):
            ganforge.project(runs["class"], bad, steps=1, label=4)


def readme_python(runs, tmp_path) -> list[str]:
    """The code blocks of the README's "From Python" section as written, on the tiny runs (and the
    files they read made in tmp_path)."""
    import re
    from pathlib import Path

    from torchvision.utils import save_image

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## From Python\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    save_image(ganforge.load(runs["class"]).sample(1, seed=1, label=3) * 0.5 + 0.5, tmp_path / "photo.png")
    (tmp_path / "photos").mkdir()
    for i in range(3):
        Image.new("RGB", (20, 24), (80 * i, 40, 200)).save(tmp_path / "photos" / f"{i}.png")
    tiny = 'kimg=0.016, resolution=16, batch=8, model_opts={"base_channels": 8}, tick=0.008, outdir="runs"'
    for example, here in (("runs/00000-cdcgan-mnist", str(runs["class"])), ("runs/00001-dfgan-birds", str(runs["text"])),
                          ('kimg=1, outdir="runs"', tiny), ("n=500", "n=64")):
        assert any(example in block for block in blocks), example  # the README still shows what this stands in for
        blocks = [block.replace(example, here) for block in blocks]
    return blocks


@pytest.mark.slow
def test_the_readme_s_python_examples_run_in_a_jupyter_kernel_and_ctrl_c_stops_a_cell(runs, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="the [test] extra's nbformat runs the README in a notebook")
    nbclient = pytest.importorskip("nbclient", reason="the [test] extra's nbclient runs the README in a notebook")
    pytest.importorskip("ipykernel", reason="the [test] extra's ipykernel is the notebook's kernel")
    import os
    import signal
    from pathlib import Path

    from nbformat.v4 import new_code_cell, new_notebook

    blocks = readme_python(runs, tmp_path)
    facts = ("import json\nprint(json.dumps({'images': [list(images.shape), str(images.dtype)], "
             "'pictures': len(pictures), 'finished': run.finished, 'results': sorted(results), "
             "'latent': list(found.latent.shape), 'path': str(path), 'images_in_summary': summary['images']}))")
    # then a long run, interrupted as Jupyter's stop button does (SIGINT to the kernel) once it has two ticks
    long_run = new_code_cell("ganforge.train(resolution=16, batch=16, model_opts={'base_channels': 8}, kimg=50, "
                             "tick=0.032, outdir='stopped')\nprint('went on')", metadata={"tags": ["raises-exception"]})
    after = new_code_cell("import sys\nprint(type(sys.last_value).__name__, sys.last_value.run.finished)")
    notebook = new_notebook(cells=[new_code_cell(block) for block in blocks] + [new_code_cell(facts), long_run, after])
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))  # the kernel imports this checkout
    monkeypatch.delenv("GANFORGE_PROGRESS", raising=False)  # bars as a user's notebook shows them
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})

    def interrupt():
        stats = tmp_path / "stopped" / "00000-cdcgan-mnist" / "stats.jsonl"
        while not (stats.exists() and stats.read_text().count("\n") >= 2):
            if finished.wait(0.2):
                return
        os.kill(client.km.provisioner.pid, signal.SIGINT)

    finished = threading.Event()
    interrupter = threading.Thread(target=interrupt)
    interrupter.start()
    try:
        client.execute()  # raises if a cell other than the interrupted one fails
    finally:
        finished.set()
        interrupter.join()
    stopped = [output for output in notebook.cells[-2].outputs if output["output_type"] == "error"]
    assert [output["ename"] for output in stopped] == ["KeyboardInterrupt"], notebook.cells[-2].outputs
    assert not any("went on" in output.get("text", "") for output in notebook.cells[-2].outputs)  # the cell stopped
    assert notebook.cells[-1].outputs[0]["text"] == "KeyboardInterrupt False\n"
    latest = tmp_path / "stopped" / "00000-cdcgan-mnist" / "latest.pt"
    assert torch.load(latest, weights_only=True)["images_seen"] > 32  # the stop's own snapshot, after two ticks
    facts = json.loads(notebook.cells[-3].outputs[-1]["text"])
    assert facts["images"] == [[16, 1, 16, 16], "torch.float32"] and facts["pictures"] == 16  # as the README says
    assert facts["finished"] and "swd" in facts["results"] and facts["latent"] == [1, 100]
    assert Image.open(tmp_path / "walk.gif").n_frames > 1 and tmp_path / facts["path"] == tmp_path / "generator.pt"
    assert facts["images_in_summary"] == 3 and (tmp_path / "photos-64.zip").is_file()
    trained = next(cell for cell in notebook.cells if "ganforge.train(" in cell.source).outputs
    shown = [output.get("data", {}) for output in trained if output["output_type"] == "display_data"]
    stderr = "".join(output["text"] for output in trained if output.get("name") == "stderr")
    try:
        import ipywidgets  # noqa: F401 - the [notebook] extra
    except ImportError:  # tqdm.auto falls back to its text bar, redrawn with \r, and says why
        assert not shown and "IProgress not found" in stderr and "\r100%" in stderr, stderr
    else:  # tqdm.notebook's bar: a widget, with its text form for viewers without widgets
        bars = [data for data in shown if "application/vnd.jupyter.widget-view+json" in data]  # evaluate's too
        assert bars and "0.00/16.0 [" in bars[0]["text/plain"] and "\r" not in stderr, trained  # train's, of 16 img
        states = notebook.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"]
        assert any(m["model_name"] == "FloatProgressModel" and m["state"]["value"] == m["state"]["max"] == 16
                   for m in states.values())  # the bar reached the run's 16 images


def test_interpolate_writes_the_command_s_walk(runs, tmp_path):
    args = ["--seeds", "1,7", "--labels", "3,8", "--seconds", "0.5", "--fps", "8"]
    result = CliRunner().invoke(main, ["interpolate", str(runs["class"]), *args, "--out", str(tmp_path / "cli.gif")])
    assert result.exit_code == 0, result.output
    lines = []
    path = ganforge.interpolate(runs["class"], tmp_path / "api.gif", seeds=[1, 7], labels=[3, "8"], seconds=0.5, fps=8,
                                report=lines.append)
    assert path == tmp_path / "api.gif" and path.read_bytes() == (tmp_path / "cli.gif").read_bytes()
    assert lines == [result.output.strip().replace("cli.gif", "api.gif")]
    frames = ganforge.interpolate(runs["class"], None, seeds="1,7", labels="3,8", seconds=0.5, fps=8)
    assert frames.shape == (4, 16, 16, 3) and frames.dtype == np.uint8 and not (tmp_path / "walk.mp4").exists()
    with Image.open(path) as gif:
        for i, frame in enumerate(frames):
            gif.seek(i)
            assert np.array_equal(np.asarray(gif.convert("RGB")), frame)
    for bad, args in ((dict(seeds=[4]), ["--seeds", "4"]), (dict(fps=0), ["--fps", "0"]),
                      (dict(labels=[12]), ["--labels", "12"])):
        with pytest.raises(ganforge.OptionError) as caught:
            ganforge.interpolate(runs["class"], tmp_path / "x.gif", **{"seconds": 0.5, **bad})
        refused = CliRunner().invoke(main, ["interpolate", str(runs["class"]), "--seconds", "0.5", *args,
                                            "--out", str(tmp_path / "x.gif")])
        assert refused.exit_code != 0 and refused.output.strip().splitlines()[-1] == f"Error: {caught.value}", args


@pytest.mark.filterwarnings("ignore:`torch.jit")
@pytest.mark.parametrize("format", ["torchscript", "onnx"])
def test_export_writes_the_command_s_generator(runs, tmp_path, format):
    suffix = {"torchscript": ".pt", "onnx": ".onnx"}[format]
    if format == "onnx":
        onnxruntime = pytest.importorskip("onnxruntime")
    result = CliRunner().invoke(main, ["export", str(runs["class"]), "--format", format, "--out", str(tmp_path / f"cli{suffix}")])
    assert result.exit_code == 0, result.output
    lines = []
    paths = ganforge.export(runs["class"], format=format, out=tmp_path / f"api{suffix}", report=lines.append)
    assert paths == [tmp_path / f"api{suffix}"] and lines == [result.output.strip().replace(f"cli{suffix}", f"api{suffix}")]
    z, labels = torch.randn(5, 100, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 3, 5, 8, 9])
    if format == "torchscript":
        ours, theirs = (torch.jit.load(str(tmp_path / f"{name}.pt"))(z, labels) for name in ("api", "cli"))
    else:
        ours, theirs = (torch.from_numpy(onnxruntime.InferenceSession(str(tmp_path / f"{name}.onnx"), providers=[
            "CPUExecutionProvider"]).run(None, {"z": z.numpy(), "labels": labels.numpy()})[0]) for name in ("api", "cli"))
    assert ours.shape == (5, 1, 16, 16) and torch.equal(ours, theirs)
    with torch.no_grad():
        assert torch.allclose(ours, ganforge.load(runs["class"])(z, labels), atol=1e-5)
    with pytest.raises(ganforge.OptionError) as caught:
        ganforge.export(runs["class"], format=format, out=runs["class"] / "latest.pt")
    refused = CliRunner().invoke(main, ["export", str(runs["class"]), "--format", format, "--out",
                                        str(runs["class"] / "latest.pt")])
    assert refused.output.strip().splitlines()[-1] == f"Error: {caught.value}"


@pytest.mark.parametrize("command,args", [("interpolate", dict(seconds=0.5)), ("export", dict(format="torchscript"))])
def test_an_out_that_cannot_be_written_is_refused_before_any_work_as_the_command_refuses_it(runs, tmp_path, monkeypatch,
                                                                                             command, args):
    (tmp_path / "afile").write_text("")
    out = tmp_path / "afile" / ("walk.gif" if command == "interpolate" else "g.pt")  # below a file: no folder there
    refused = CliRunner().invoke(main, [command, str(runs["class"]), *[f"--{k}={v}" for k, v in args.items()],
                                        "--out", str(out)])
    assert refused.exit_code == 2 and "Traceback" not in refused.output, refused.output

    def no_work(*args, **kwargs):
        raise AssertionError("the generator was loaded before the output was checked")

    monkeypatch.setattr("ganforge.inference.load_model", no_work)
    with pytest.raises(ganforge.OptionError) as caught:
        getattr(ganforge, command)(runs["class"], out=out, **args)
    assert str(caught.value) == f"Invalid value for --out: cannot write in {tmp_path / 'afile'} (File exists)"
    assert refused.output.strip().splitlines()[-1] == f"Error: {caught.value}"


def test_dataset_writes_the_command_s_conversion(tmp_path):
    import zipfile

    rng = np.random.default_rng(1)
    for i, cls in enumerate(["cat", "dog", "dog", "cat"]):
        (tmp_path / "src" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20 + 4 * i, 24, 3), dtype=np.uint8)).save(tmp_path / "src" / cls / f"{i}.png")
    (tmp_path / "src" / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    source = str(tmp_path / "src")
    for dest, args, kwargs in (("folder", ["--lods"], dict(lods=True)), ("small.zip", ["--channels", "1"], dict(channels=1))):
        result = CliRunner().invoke(main, ["dataset", source, str(tmp_path / "cli" / dest), "--resolution", "8", *args])
        assert result.exit_code == 0, result.output
        lines = []
        summary = ganforge.dataset(source, tmp_path / "api" / dest, 8, report=lines.append, **kwargs)
        assert lines == [result.output.strip().replace(str(tmp_path / "cli"), str(tmp_path / "api"))]
        assert summary["images"] == 4 and summary["classes"] == ["cat", "dog"] and len(summary["skipped"]) == 1
        if dest.endswith(".zip"):
            ours, theirs = ({name: z.read(name) for name in z.namelist()}
                            for z in (zipfile.ZipFile(tmp_path / side / dest) for side in ("api", "cli")))
        else:
            ours, theirs = ({p.relative_to(tmp_path / side / dest): p.read_bytes()
                             for p in sorted((tmp_path / side / dest).rglob("*")) if p.is_file()} for side in ("api", "cli"))
        assert len(ours) > 4 and ours == theirs, dest
        assert json.loads(ours[next(k for k in ours if str(k) == "dataset.json")]) == summary
    with pytest.raises(ganforge.OptionError) as caught:
        ganforge.dataset(source, tmp_path / "x.zip", 30)
    refused = CliRunner().invoke(main, ["dataset", source, str(tmp_path / "x.zip"), "--resolution", "30"])
    assert refused.exit_code != 0 and refused.output.strip().splitlines()[-1] == f"Error: {caught.value}"
    assert not (tmp_path / "x.zip").exists()

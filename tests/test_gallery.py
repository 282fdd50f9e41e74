"""benchmarks/gallery.py builds docs/results from run directories: checked on small finished runs."""

import importlib.util
import json
import shlex
from pathlib import Path

from PIL import Image

from ganforge.cli import main as cli


def gallery():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gallery.py"
    spec = importlib.util.spec_from_file_location("gallery", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gallery_shows_each_runs_own_grid_prompt_rows_curves_and_the_command(finished_runs, tmp_path, capsys):
    done = finished_runs / "done"
    status = gallery().main(["--run", f"digits={done / '00000-cdcgan-mnist'}", "--run",
                             f"captions={done / '00001-dfgan-mnist-captions'}", "--out", str(tmp_path),
                             "--prompt", "a handwritten digit three", "--prompt", "a purple seven made of glass"])
    assert status == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    digits, captions = rows
    last_grid = sorted((done / "00000-cdcgan-mnist").glob("fakes*.png"))[-1]
    assert Image.open(tmp_path / "digits.png").size == Image.open(last_grid).size  # the run's own grid, not re-drawn
    assert Image.open(tmp_path / "captions-prompts.png").size[1] == 2 * 18  # one row per prompt
    assert digits["pictures"] == ["digits.png", "digits-curves.png"] and digits["kimg"] == 0.1
    assert set(digits["metrics"]) == {"swd"} and digits["device"] == "cpu"
    command = shlex.split(digits["command"])
    assert command[:2] == ["ganforge", "train"] and "--metrics" in command and "base_channels=8" in command
    index = (tmp_path / "index.md").read_text()
    assert "| digits | 0.1 | cpu |" in index and "![captions: captions-prompts.png](captions-prompts.png)" in index

    from click.testing import CliRunner

    dry = CliRunner().invoke(cli, [*command[1:], "--dry-run"])  # the command trains the same run again
    assert dry.exit_code == 0, dry.output
    again = json.loads(dry.output)
    saved = json.loads((done / "00000-cdcgan-mnist" / "training_options.json").read_text())
    assert all(again[k] == saved[k] for k in saved if k not in ("outdir", "channels", "processes", "run_id")), \
        {k: (again.get(k), v) for k, v in saved.items() if again.get(k) != v}

"""Hostile input: ordinary mistakes and abuse, run against the command line, one table of outcomes.

    python benchmarks/hostile_inputs.py                 # every case (about a minute on 2 cores)
    python benchmarks/hostile_inputs.py --cases 1,5,9   # some

Each case runs `ganforge ...` in this process (click's test runner: the same code as the shell
command, without a torch import per case) against a small finished run and files it makes, then
is judged:
- clear error: a non-zero exit with one line naming the option or file, no traceback;
- handled: exit 0 and the right result (the case's own check);
- traceback: an exception escaped (a fault);
- silent: exit 0 with a wrong result.
"Work lost" says whether files that existed before the case were changed or removed.
Signals (Ctrl-C, SIGTERM, SIGKILL) are exercised by tests/ and benchmarks/kill_test.py instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from click.testing import CliRunner

from ganforge.cli import main

TINY = ["--resolution", "16", "--batch", "16", "--base-channels", "8", "--kimg", "0.032", "--tick", "0.032",
        "--sample-every", "0.032", "--snap", "0.032", "--quiet"]


@dataclass
class Case:
    name: str
    args: Callable[[Path], list]                     # work folder -> command line
    check: Callable[[Path, object], bool] = lambda work, result: True   # for exit 0: is the result right?
    guard: Callable[[Path], list[Path]] = lambda work: []               # files that must survive unchanged


def digits_folder(work: Path, name: str, n: int = 20, corrupt_first: bool = False) -> Path:
    from PIL import Image

    from ganforge.data import load_dataset

    folder = work / name
    folder.mkdir(exist_ok=True)
    for i, img in enumerate(load_dataset("mnist", 16).images[:n]):
        Image.fromarray(img[0].numpy()).save(folder / f"{i:03d}.png")
    if corrupt_first:
        (folder / "000.png").write_bytes(b"not a png")
    return folder


def copy_run(work: Path, name: str) -> Path:
    shutil.copytree(work / "run", work / name)
    return work / name


def _foreign_snapshot_folder(work: Path) -> Path:
    folder = work / "thesis"
    folder.mkdir()
    shutil.copy(work / "run" / "latest.pt", folder / "model.pt")
    (folder / ".thesis.tmp").write_text("precious")
    return folder / "model.pt"


def _locked_run(work: Path) -> Path:
    run = copy_run(work, "locked")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    (run / ".lock").write_text(str(holder.pid))
    return run


def _torn_metric_cache(work: Path) -> Path:
    run = copy_run(work, "torn-cache")
    (run / "metric-cache").mkdir()
    args = ["evaluate", str(run), "--metrics", "acc", "--n", "20"]
    CliRunner().invoke(main, args)
    for cached in (run / "metric-cache").glob("*.pt"):
        cached.write_bytes(cached.read_bytes()[:100])  # torn by a kill mid-write
    return run


def _other_model_copied_in(work: Path) -> Path:
    run = copy_run(work, "swapped")
    CliRunner().invoke(main, ["train", "--model", "began", *TINY, "--outdir", str(work / "began")])
    shutil.copy(next((work / "began").iterdir()) / "latest.pt", run / "latest.pt")
    return run


def _empty_class(work: Path) -> Path:
    for name in ("ant", "cat"):
        digits_folder(work / "classes", name, n=3) if (work / "classes").mkdir(exist_ok=True) is None else None
    (work / "classes" / "bee").mkdir()
    return work / "classes"


CASES = [
    Case("--outdir is a file", lambda w: ["train", *TINY, "--outdir", str(_file(w, "afile"))]),
    Case("generate --out names a file", lambda w: ["generate", str(w / "run"), "--out", str(_file(w, "out"))]),
    Case("export --out unwritable", lambda w: ["export", str(w / "run"), "--out", str(_file(w, "f2") / "g.onnx")]),
    Case("evaluate --out unwritable", lambda w: ["evaluate", str(w / "run"), "--metrics", "swd", "--n", "20",
                                                "--out", str(_file(w, "f3") / "r.json")]),
    Case("--device gpu0", lambda w: ["train", *TINY, "--device", "gpu0", "--outdir", str(w / "r")]),
    Case("generate --device cuda without a GPU", lambda w: ["generate", str(w / "run"), "--device", "cuda"]),
    Case("evaluate --fake with a corrupt first file", lambda w: [
        "evaluate", "--fake", str(digits_folder(w, "fake", corrupt_first=True)), "--real", str(digits_folder(w, "real")),
        "--metrics", "swd", "--n", "19", "--out", str(w / "r.json")],
        check=lambda w, r: json.loads((w / "r.json").read_text())["swd"]["n"] == 19),
    Case("--model-opt base_channels=abc", lambda w: ["train", *TINY, "--model-opt", "base_channels=abc", "--outdir", str(w / "r")]),
    Case("--model-opt resolution=64", lambda w: ["train", *TINY, "--model-opt", "resolution=64", "--outdir", str(w / "r")]),
    Case("--model-opt nonsense=1", lambda w: ["train", *TINY, "--model-opt", "nonsense=1", "--outdir", str(w / "r")]),
    Case("torn metric cache", lambda w: ["evaluate", str(_torn_metric_cache(w)), "--metrics", "acc", "--n", "20"],
         check=lambda w, r: '"conditional_accuracy"' in r.output),
    Case("--resolution 4096 on the built-in digits", lambda w: ["train", "--resolution", "4096", "--outdir", str(w / "r")]),
    Case("--batch 10**9", lambda w: ["train", "--batch", str(10**9), "--outdir", str(w / "r")]),
    Case("generate --n 10**7", lambda w: ["generate", str(w / "run"), "--n", str(10**7), "--out", str(w / "big")]),
    Case("--snap 0.016: kept snapshots never collide", lambda w: ["train", *TINY[:-7], "--kimg", "0.048", "--snap", "0.016",
                                                                 "--quiet", "--outdir", str(w / "snaps")],
         check=lambda w, r: len(list(next((w / "snaps").iterdir()).glob("snapshot-*.pt"))) == 3),
    Case("--kimg below one image", lambda w: ["train", "--kimg", "0.0001", "--outdir", str(w / "r")]),
    Case("an empty class folder", lambda w: ["train", *TINY, "--data", str(_empty_class(w)), "--outdir", str(w / "r")]),
    Case("generate --out x.gif", lambda w: ["generate", str(w / "run"), "--n", "4", "--out", str(w / "x.gif")],
         check=lambda w, r: (w / "x.gif").is_file()),
    Case("evaluate against one real image", lambda w: [
        "evaluate", "--fake", str(digits_folder(w, "fake1", n=4)), "--real", str(digits_folder(w, "real1", n=1)),
        "--metrics", "swd,msssim", "--n", "4"]),
    Case("plot a stats.jsonl torn by a kill", lambda w: ["plot", str(_torn_stats(w))],
         check=lambda w, r: (w / "torn-stats" / "stats.png").exists()),
    Case("resume a finished run", lambda w: ["train", "--resume", str(copy_run(w, "finished"))]),
    Case("resume a snapshot outside a run directory", lambda w: ["train", "--resume", str(_foreign_snapshot_folder(w)),
                                                                "--kimg", "0.096"],
         guard=lambda w: [w / "thesis" / ".thesis.tmp", w / "thesis" / "model.pt"]),
    Case("resume a run with another model's snapshot copied in", lambda w: [
        "train", "--resume", str(_other_model_copied_in(w)), "--kimg", "0.096"],
        guard=lambda w: [w / "swapped" / "stats.jsonl", w / "swapped" / "latest.pt"]),
    Case("resume a run another process is training", lambda w: ["train", "--resume", str(_locked_run(w)), "--kimg", "0.096"],
         guard=lambda w: [w / "locked" / "stats.jsonl", w / "locked" / "latest.pt"]),
    Case("--resume a garbage file", lambda w: ["train", "--resume", str(_garbage(w))]),
    Case("--model stylegan9", lambda w: ["train", "--model", "stylegan9"]),
    Case("--data that does not exist", lambda w: ["train", "--data", str(w / "nowhere"), "--outdir", str(w / "r")]),
    Case("generate --label out of range", lambda w: ["generate", str(w / "run"), "--label", "10"]),
    Case("--metrics fud", lambda w: ["train", *TINY, "--metrics", "fud", "--outdir", str(w / "r")]),
    Case("--gpus 8 without GPUs", lambda w: ["train", "--gpus", "8", "--outdir", str(w / "r")]),
]


def _file(work: Path, name: str) -> Path:
    (work / name).write_text("x")
    return work / name


def _garbage(work: Path) -> Path:
    (work / "garbage.pt").write_bytes(os.urandom(1000))
    return work / "garbage.pt"


def _torn_stats(work: Path) -> Path:
    run = copy_run(work, "torn-stats")
    with open(run / "stats.jsonl", "a") as f:
        f.write('{"kimg": 0.04, "ste')
    return run


def run_case(case: Case, work: Path) -> dict:
    args = [str(a) for a in case.args(work)]
    guarded = {p: p.read_bytes() for p in case.guard(work) if p.exists()}
    runs_before = sorted((work / "r").iterdir()) if (work / "r").exists() else []
    result = CliRunner().invoke(main, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        outcome = "traceback"
    elif result.exit_code != 0:
        lines = [line for line in result.output.splitlines() if line.strip()]
        outcome = "clear error" if lines and len(lines[-1]) > 20 else "silent"
    else:
        outcome = "handled" if case.check(work, result) else "silent"
    lost = any(not p.exists() or p.read_bytes() != data for p, data in guarded.items())
    leftover = (work / "r").exists() and sorted((work / "r").iterdir()) != runs_before
    last = next((line for line in reversed(result.output.splitlines()) if line.strip()), "")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        last = f"{type(result.exception).__name__}: {result.exception}"
    return {"case": case.name, "outcome": outcome, "work lost": "yes" if lost else "no",
            "empty run dir left": "yes" if leftover else "no", "message": last[:140]}


def main_(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=None, help="comma-separated case numbers (1-based) [default: all]")
    args = parser.parse_args(argv)
    chosen = [CASES[int(i) - 1] for i in args.cases.split(",")] if args.cases else CASES
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ.setdefault("GANFORGE_PROGRESS", "0")
        base = [a if a != "0.032" or i != TINY.index("--kimg") + 1 else "0.064" for i, a in enumerate(TINY)]
        result = CliRunner().invoke(main, ["train", *base, "--outdir", str(work / "runs")])  # two stats rows
        assert result.exit_code == 0, result.output
        shutil.move(str(next((work / "runs").iterdir())), work / "run")
        for i, case in enumerate(chosen, 1):
            case_work = work / f"case{i}"
            case_work.mkdir()
            shutil.copytree(work / "run", case_work / "run")
            rows.append(run_case(case, case_work))
            print(f"{i:2d}. {rows[-1]['case']}: {rows[-1]['outcome']}", file=sys.stderr, flush=True)
    print("| case | outcome | work lost | empty run dir left | message |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['outcome']} | {r['work lost']} | {r['empty run dir left']} | {r['message'].replace('|', '/')} |")
    bad = [r for r in rows if r["outcome"] in ("traceback", "silent") or r["work lost"] == "yes"
           or r["empty run dir left"] == "yes"]
    counts = {k: sum(r["outcome"] == k for r in rows) for k in ("clear error", "handled", "traceback", "silent")}
    print(f"\n{len(rows)} cases: " + ", ".join(f"{v} {k}" for k, v in counts.items())
          + f", {sum(r['work lost'] == 'yes' for r in rows)} with work lost")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main_())

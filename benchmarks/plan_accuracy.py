"""How close `ganforge train --plan` comes to the real run's wall time.

For each case, `train ... --plan` runs first, then the same `train ...` for real, each in its own
process; the table gives the plan's whole-run estimate, the estimate the run itself logged at its
first tick, the real wall time of the training process (Python's start-up included; the plan counts
from when the options are read), and the ratio estimate / real (the target: within 30%).

    python benchmarks/plan_accuracy.py [--emoji DIR] [--cdcgan-kimg 50] [--pggan-kimg 25] [--threads N]

Cases: (a) the default run (the conditional DCGAN on the built-in digits) with a shorter --kimg,
(b) PGGAN's cpu preset growing towards 32x32 on a folder of RGB images (`--emoji`, the Noto emoji
PNGs; without it, the built-in digits at 16x16), shortened with --kimg. Choose each --kimg so the
real run takes a few minutes on your machine. `--threads` sets OMP_NUM_THREADS for both processes:
on a CPU shared with other jobs, PyTorch's threads wait for each other and a run's speed swings
with the other jobs; one thread a process keeps it steadier.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def seconds_of(clock: str) -> int:
    h, m, s = (int(x) for x in clock.split(":"))
    return 3600 * h + 60 * m + s


def case(name: str, args: list[str], outdir: Path, env: dict) -> dict:
    command = [sys.executable, "-m", "ganforge", "train", *args, "--outdir", str(outdir), "--quiet"]
    planned = subprocess.run([*command, "--plan"], capture_output=True, text=True, env=env, cwd=ROOT)
    if planned.returncode != 0:
        raise SystemExit(f"{name}: --plan failed:\n{planned.stderr[-2000:]}")
    print(planned.stdout, flush=True)
    plan = seconds_of(re.search(r"^whole run: about (\d+:\d\d:\d\d)", planned.stdout, re.M).group(1))
    start = time.perf_counter()
    ran = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    real = time.perf_counter() - start
    if ran.returncode != 0:
        raise SystemExit(f"{name}: the run failed:\n{ran.stderr[-2000:]}")
    run_dir = Path(re.search(r"^run directory: (.+)$", ran.stdout, re.M).group(1))
    if not run_dir.is_absolute():
        run_dir = ROOT / run_dir
    first = re.search(r"^estimate: the whole run about (\d+:\d\d:\d\d)", (run_dir / "log.txt").read_text(), re.M)
    return dict(name=name, command="ganforge train " + " ".join(args), plan=plan,
                first_tick=seconds_of(first.group(1)) if first else None, real=real)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emoji", type=Path, default=None, help="A folder of RGB images for the PGGAN case")
    parser.add_argument("--cdcgan-kimg", type=float, default=50.0)
    parser.add_argument("--pggan-kimg", type=float, default=25.0)
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for both processes")
    a = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GANFORGE_PROGRESS": "0"}
    if a.threads:
        env["OMP_NUM_THREADS"] = str(a.threads)
    pggan = (["--data", str(a.emoji), "--resolution", "32"] if a.emoji else ["--data", "mnist", "--resolution", "16"])
    cases = [("cDCGAN, the default run", ["--kimg", f"{a.cdcgan_kimg:g}"]),
             ("PGGAN, preset cpu", ["--model", "pggan", *pggan, "--model-opt", "preset=cpu", "--kimg",
                                    f"{a.pggan_kimg:g}"])]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, args in cases:
            rows.append(case(name, args, Path(tmp), env))
    print("| case | command | --plan | first tick | real wall | --plan / real | first tick / real |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        first = f"{r['first_tick']} s" if r["first_tick"] is not None else "-"
        first_ratio = f"{r['first_tick'] / r['real']:.2f}" if r["first_tick"] is not None else "-"
        print(f"| {r['name']} | `{r['command']}` | {r['plan']} s | {first} | {r['real']:.0f} s | "
              f"{r['plan'] / r['real']:.2f} | {first_ratio} |")


if __name__ == "__main__":
    main()

"""Kill a CPU training run with SIGKILL at random moments, resume each time, and check nothing is lost.

    python benchmarks/kill_test.py --kills 20

Each launch of `ganforge train` is killed after a random delay (snapshots are written every two
steps, so many kills land during a write); after every kill each snapshot in the run directory
must load, and the run is resumed. At the end the final weights must equal those of an
uninterrupted run with the same seed, bit for bit. Prints the number of kills survived.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ganforge.snapshots import load_snapshot

ARGS = ["--data", "mnist", "--resolution", "16", "--batch", "16", "--base-channels", "8",
        "--tick", "0.8", "--sample-every", "4", "--snap", "0.032", "--quiet", "--device", "cpu"]


def train_cmd(outdir: Path, resume: Path | None, kimg: float = 12) -> list[str]:
    cmd = [sys.executable, "-m", "ganforge", "train", *ARGS, "--kimg", str(kimg), "--outdir", str(outdir)]
    return cmd + (["--resume", str(resume)] if resume else [])


def run_dir_of(outdir: Path) -> Path | None:
    runs = sorted(outdir.glob("0*"))
    return runs[-1] if runs else None


def resumable(outdir: Path) -> Path | None:
    """The run to resume; a run killed before its first snapshot is removed, to start afresh."""
    run = run_dir_of(outdir)
    if run is not None and not (run / "latest.pt").exists():
        shutil.rmtree(run)
        return None
    return run


def kill_and_resume(kills: int, seed: int = 0, max_delay: float = 8.0, workdir: Path | None = None,
                    kimg: float = 12) -> dict:
    rng = random.Random(seed)
    work = Path(workdir or tempfile.mkdtemp(prefix="ganforge-kill-"))
    reference = work / "reference"
    subprocess.run(train_cmd(reference, None, kimg), check=True, capture_output=True)
    victim = work / "killed"
    survived = unreadable = 0
    while survived < kills:
        proc = subprocess.Popen(train_cmd(victim, resumable(victim), kimg), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.5, max_delay))
        if proc.poll() is not None:  # it finished before this kill: nothing left to interrupt
            if proc.returncode:
                raise RuntimeError(proc.stderr.read().decode())
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        survived += 1
        for snap in (run_dir_of(victim) or victim).glob("*.pt"):
            try:
                load_snapshot(snap)
            except Exception:  # noqa: BLE001
                unreadable += 1
    run = resumable(victim)
    # A kill that lands after the last snapshot, while the process exits, leaves a finished run.
    finished = run is not None and load_snapshot(run)["images_seen"] >= round(kimg * 1000)
    if not finished:
        final = subprocess.run(train_cmd(victim, run, kimg), capture_output=True)
        if final.returncode:
            raise RuntimeError(final.stderr.decode())
    a, b = load_snapshot(run_dir_of(reference)), load_snapshot(run_dir_of(victim))
    same = a["step"] == b["step"] and all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    return {"kills_survived": survived, "unreadable_snapshots": unreadable, "final_weights_equal": same,
            "steps": b["step"], "workdir": str(work)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-delay", type=float, default=8.0)
    args = p.parse_args()
    print(kill_and_resume(args.kills, args.seed, args.max_delay))


if __name__ == "__main__":
    main()

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Under pytest-xdist (`-n auto`) the workers share the cores: one thread each, and the same for the
# `ganforge` processes the tests start, so that two workers do not fight over both cores.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, os.cpu_count() or 1) // _WORKERS)
torch.set_num_threads(_THREADS)
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Caches that live in the user's home (encoded captions) go to a folder of the test session's."""
    monkeypatch.setenv("GANFORGE_CACHE", str(tmp_path_factory.getbasetemp() / "ganforge-cache"))


@pytest.fixture
def shared_data():
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def finished_runs(tmp_path_factory):
    """A folder of two small finished runs as a user would have them: a class-conditional one with
    a metric logged during training, and a text-to-image one."""
    from ganforge.training import TrainOptions, train

    root = tmp_path_factory.mktemp("runs")
    train(TrainOptions(data="mnist", resolution=16, batch=16, model_opts={"base_channels": 8}, kimg=0.064,
                       tick=0.016, sample_every=0.032, snap=0.064, metrics=["swd"], metrics_every=0.032,
                       metrics_n=64, outdir=str(root / "done")), progress=False)
    train(TrainOptions(model="dfgan", data="mnist-captions", resolution=16, batch=8, model_opts={"nf": 4},
                       kimg=0.016, tick=0.008, outdir=str(root / "done")), progress=False)
    return root


@pytest.fixture
def tmpfs(tmp_path):
    """mount(name, size="1m", read_only=False) -> a real small file system (tmpfs) at tmp_path/name, for
    full and read-only disks; skips the test where mounting is not permitted (not root, a container)."""
    mounted = []

    def mount(name: str, size: str = "1m", read_only: bool = False) -> Path:
        point = tmp_path / name
        point.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True).returncode:
            pytest.skip("mounting a tmpfs is not permitted here")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def ganforge(*args, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """`ganforge ARGS` as a user runs it: its own process, this checkout's code, output as text."""
    checkout = str(Path(__file__).resolve().parents[1])  # found from any working directory, installed or not
    return subprocess.run([sys.executable, "-m", "ganforge", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": checkout, "GANFORGE_PROGRESS": "0", **(env or {})}, **kwargs)


def poisoned(out):
    """A phase's PhaseLoss with its loss made NaN, its logged statistics as the model gave them."""
    return dataclasses.replace(out, loss=out.loss * float("nan"))


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The message of a command that failed as a user's mistake should: exit 1, one line, no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), result.stderr
    return lines[0]


def interrupted_training(command: list[str], run_dir: Path) -> tuple[subprocess.CompletedProcess, float]:
    """Ctrl-C as a user presses it: start `command` (a training of many minutes, into `run_dir`) in its
    own process with this checkout's code, send SIGINT once the run has logged two ticks, and wait
    for the process to end. Returns what it did and the seconds from the Ctrl-C to its end."""
    import signal
    import time

    checkout = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": checkout, "GANFORGE_PROGRESS": "0"})
    stats = Path(run_dir) / "stats.jsonl"
    deadline = time.monotonic() + 120
    while not (stats.exists() and stats.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(command, proc.returncode, out, err), time.monotonic() - sent

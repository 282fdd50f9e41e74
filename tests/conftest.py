import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

torch.set_num_threads(min(2, os.cpu_count() or 1))


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

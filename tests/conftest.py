import os
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

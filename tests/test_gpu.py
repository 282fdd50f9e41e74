"""On a CUDA machine: one tick of every model in bf16 (skipped elsewhere; the full matrix is
benchmarks/device_run.sh)."""

import json

import pytest
import torch

from ganforge.training import TrainOptions, train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

RUNS = {
    "cdcgan": dict(data="mnist", model_opts={"base_channels": 8}),
    "began": dict(data="mnist", model_opts={"base_channels": 8}),
    "pggan": dict(data="mnist", model_opts={"preset": "cpu", "fade_kimg": 0.032, "stab_kimg": 0.032, "fmap_max": 16}),
    "dfgan": dict(data="mnist-captions", model_opts={"nf": 4}),
}


@pytest.mark.parametrize("model", list(RUNS))
def test_one_tick_in_bf16_on_the_gpu(tmp_path, model):
    run = train(TrainOptions(model=model, resolution=16, batch=16, kimg=0.128, tick=0.128, sample_every=0.128,
                             snap=0.128, precision="bf16", device="cuda", outdir=str(tmp_path), **RUNS[model]),
                progress=False)
    row = json.loads((run / "stats.jsonl").read_text().splitlines()[-1])
    assert row["kimg"] >= 0.128 and row["peak_mem_gb"] > 0
    assert all(v == v for v in row.values() if isinstance(v, float))  # no NaN
    assert (run / "latest.pt").exists()

"""No step waits for the host: the guard sees every kind of host read on the CPU, and every model's
loop body, augmentation on, runs under it without one (also under two gloo processes)."""

import subprocess
import sys

import pytest
import torch

from ganforge.hostsync import HostReads, HostSyncError, StepCensus
from ganforge.training import TrainOptions, train

HOST_READS = {
    "item": lambda t: t.sum().item(),
    "bool": lambda t: bool(t.sum() > 0),
    "float": lambda t: float(t.sum()),
    "tolist": lambda t: t.tolist(),
    "cpu": lambda t: t.cpu(),
    "numpy": lambda t: t.numpy(),
    "a boolean mask": lambda t: t[t > 0],
    "nonzero": lambda t: t.nonzero(),
    "torch.tensor": lambda t: t + torch.tensor(2.0),
}


@pytest.mark.parametrize("read", list(HOST_READS))
def test_the_guard_refuses_each_kind_of_host_read(read):
    x = torch.ones(4)
    with pytest.raises(HostSyncError, match="the host waits for the device at outside ganforge"):
        with HostReads(strict=True):
            HOST_READS[read](x)


def test_the_guard_lets_device_work_through_and_counts_by_place():
    x = torch.ones(4)
    with HostReads() as reads:
        y = (x * 2).sum() + torch.full((), 3.0)  # a fill from a number: no copy from the host
        x.add_(1)
    assert reads.total == 0 and y.dtype == torch.float32
    with HostReads() as reads:
        x.sum().item()
        x.sum().item()
    assert reads.total == 2
    assert torch.Tensor.tolist is not None and x.tolist() == [2.0] * 4  # methods are restored on exit


TINY = dict(resolution=16, batch=8, kimg=0.048, tick=0.016, sample_every=1, snap=0.048, device="cpu")
MODELS = {
    "cdcgan": dict(data="mnist", model_opts={"base_channels": 4}),
    "dcgan": dict(model="dcgan", data="mnist", model_opts={"base_channels": 4}),
    "began": dict(model="began", data="mnist", model_opts={"base_channels": 4}),
    # through a fade (alpha < 1) and a growth (new optimizers) within the run
    "pggan": dict(model="pggan", data="mnist", model_opts={"preset": "cpu", "fmap_max": 8, "fade_kimg": 0.016,
                                                          "stab_kimg": 0.008}),
    "dfgan": dict(model="dfgan", data="mnist-captions", model_opts={"nf": 4}),
}


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("augment", ["ada", "diffaug"])
def test_every_models_loop_body_runs_without_a_host_read(tmp_path, model, augment):
    census = StepCensus(strict=True)
    run = train(TrainOptions(**MODELS[model], **TINY, augment=augment, xflip=True, outdir=str(tmp_path)),
                progress=False, watch_step=census)
    assert census.steps == 6 and (run / "latest.pt").exists()


def test_the_census_counts_and_places_a_host_read_in_a_step(tmp_path, monkeypatch):
    """What GANFORGE_HOST_SYNCS=count writes: one .item() put in a loss shows up, per step and placed."""
    from ganforge.models.cdcgan import CDCGAN

    original = CDCGAN.loss

    def reading(self, phase, reals, condition, ctx):
        out = original(self, phase, reals, condition, ctx)
        if phase == "G":
            out.loss.item()
        return out

    monkeypatch.setattr(CDCGAN, "loss", reading)
    monkeypatch.setenv("GANFORGE_HOST_SYNCS", "count")
    run = train(TrainOptions(**MODELS["cdcgan"], **TINY, outdir=str(tmp_path)), progress=False)
    log = (run / "log.txt").read_text()
    assert "host syncs per step: 1 seen by ganforge (over 6 steps)" in log
    # placed at the innermost ganforge line: where the step calls the loss
    assert "1 per step at ganforge/training/step.py:" in log and "(a device value read by Python" in log


@pytest.mark.slow
def test_two_gloo_processes_step_without_a_host_read(tmp_path):
    """Under torchrun the step's collectives are all-reduces on the device; the one host read left
    (are the losses finite on every rank?) is made at the tick, outside the step."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ganforge",
           "train", "--model", "began", "--data", "mnist", "--resolution", "16", "--batch", "16", "--base-channels", "4",
           "--kimg", "0.064", "--tick", "0.032", "--snap", "0.064", "--sample-every", "1", "--augment", "ada",
           "--device", "cpu", "--quiet", "--outdir", str(tmp_path)]
    env = {**__import__("os").environ, "GANFORGE_HOST_SYNCS": "refuse"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = tmp_path.iterdir()
    assert (run / "latest.pt").exists()


@pytest.mark.parametrize("model", ["cdcgan", "began", "pggan", "dfgan"])
def test_the_cuda_graph_ready_step_trains_as_the_plain_step(tmp_path, model):
    """--cuda-graphs on the CPU runs the step as it would be captured (static input buffers, the EMA's
    decay as a device tensor, ADA decided on the device): the same run."""
    from ganforge.snapshots import load_snapshot

    opts = dict(**MODELS[model], **TINY, augment="ada")
    plain = train(TrainOptions(**opts, outdir=str(tmp_path / "plain")), progress=False)
    graphed = train(TrainOptions(**opts, cuda_graphs=True, outdir=str(tmp_path / "graphed")), progress=False,
                    watch_step=StepCensus(strict=True))  # and without a host read, which a capture would refuse
    a, b = load_snapshot(plain), load_snapshot(graphed)
    assert a["step"] == b["step"] == 6
    for key in a["state"]:
        torch.testing.assert_close(b["state"][key], a["state"][key], atol=1e-6, rtol=1e-5, msg=key)
    assert b["augment"]["p"] == a["augment"]["p"] and b["augment"]["steps"] == 6
    assert "--cuda-graphs: cpu has no CUDA graphs" in (graphed / "log.txt").read_text()

"""What a CPU can show of the GPU paths: devices, dtypes under autocast, fp16 policy, out-of-memory
messages, and the GPU check's own CPU subset (the same code that runs on a GPU)."""

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from ganforge.data import load_dataset
from ganforge.models import Schedule, StepContext, build_model
from ganforge.models.pggan import fade
from ganforge.training import TrainingError, TrainOptions, train
from ganforge.hardware import make_scalers
from ganforge.training import loop
from ganforge.snapshots import load_snapshot

CONFIGS = {"cdcgan": dict(num_classes=10), "dcgan": {}, "began": dict(base_channels=4),
           "pggan": dict(preset="cpu", fmap_max=8), "dfgan": dict(nf=4)}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_tensor_of_a_step_lives_on_the_data_device(name):
    """One step of each model with everything on the `meta` device: a statistic or buffer made on
    the CPU (BEGAN's learning rate was) shows up as a CPU tensor here, as it would beside CUDA data."""
    model = build_model(name, dict(resolution=16, channels=1, **CONFIGS[name]))
    if name == "dfgan":
        model.prepare(load_dataset("mnist-captions", 16), "cpu", resumed=False)
    model = model.to("meta")
    if name == "dfgan":  # the caption table is a plain attribute, moved as prepare(device) would
        model.captions = model.captions.to("meta")
    reals = torch.zeros(4, 1, 16, 16, device="meta")
    labels = torch.zeros(4, dtype=torch.long, device="meta")
    sched = Schedule(16, 4, alpha=0.5, stage="16")  # mid-fade for PGGAN
    ctx = StepContext(latents=lambda n: model.sample_latents(n, None, "meta"), schedule=sched,
                      optimizers=model.optimizers(sched), indices=torch.arange(4, device="meta"))
    condition = model.training_condition(labels, ctx)
    for phase in model.phases():
        model.loss(phase.name, reals, condition, ctx).backward()
    model.after_step(ctx)
    assert ctx.stats and {k: v.device.type for k, v in ctx.stats.items()} == {k: "meta" for k in ctx.stats}
    assert all(t.device.type == "meta" for t in [*model.parameters(), *model.buffers()])


def test_pggan_fades_blend_inputs_of_two_dtypes():
    """Under CUDA autocast a fade meets a bf16 conv output and an fp32 upsample; torch.lerp refuses that."""
    low, high = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4).bfloat16()
    with pytest.raises(RuntimeError):
        torch.lerp(low, high, 0.25)
    out = fade(low, high, 0.25)
    assert out.dtype == torch.float32
    assert torch.allclose(out, low + 0.25 * (high.float() - low), atol=1e-6)
    mix = torch.rand(2, 1, 1, 1)
    assert fade(high, low, mix).dtype == torch.float32  # the WGAN-GP mix: a tensor weight


@pytest.mark.parametrize("model", ["pggan", "dfgan"])
def test_fp16_is_refused_where_d_is_differentiated_twice(tmp_path, model):
    opts = TrainOptions(model=model, data="mnist-captions" if model == "dfgan" else "mnist", resolution=16, batch=8,
                        kimg=0.016, precision="fp16", outdir=str(tmp_path),
                        model_opts={"nf": 4} if model == "dfgan" else {"preset": "cpu", "fmap_max": 8})
    with pytest.raises(TrainingError, match="--precision fp16: .*use --precision bf16"):
        train(opts, progress=False)
    assert not list(tmp_path.iterdir())  # refused before a run directory was made


def test_each_network_has_its_own_loss_scaler_and_old_snapshots_resume(tmp_path):
    tiny = dict(data="mnist", resolution=16, batch=8, model_opts={"base_channels": 4}, tick=0.016, sample_every=1, snap=0.016,
                outdir=str(tmp_path))
    run = train(TrainOptions(kimg=0.016, **tiny), progress=False)
    snap = load_snapshot(run)
    assert set(snap["scaler"]) == {"G", "D"}
    state = loop.RunState(optimizers={}, scalers=make_scalers("fp32", torch.device("cpu")), generator=torch.Generator(),
                          stream=type("Stream", (), {})())
    snap["scaler"] = {}  # the single (disabled) scaler state of snapshots written before
    state.restore(snap, build_model("cdcgan", snap["model_config"]), TrainOptions(**snap["options"]))
    assert state.step == snap["step"] and set(state.optimizers) == {"G", "D"}


def test_out_of_memory_names_model_size_batch_and_what_to_lower(tmp_path, monkeypatch):
    opts = TrainOptions(data="mnist", resolution=16, batch=8, model_opts={"base_channels": 4}, kimg=0.064, tick=0.016,
                        sample_every=1, snap=0.016, outdir=str(tmp_path))
    run = train(dataclasses.replace(opts, kimg=0.016), progress=False)
    before = (run / "latest.pt").read_bytes()

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loop, "training_step", oom)
    with pytest.raises(TrainingError) as err:
        train(opts, resume=str(run), explicit={"kimg"}, progress=False)
    message = str(err.value)
    assert "cdcgan at 16x16, batch 8" in message and "Lower --batch" in message and "bf16" in message
    assert f"{run / 'latest.pt'} is intact" in message
    assert (run / "latest.pt").read_bytes() == before


@pytest.mark.slow
def test_the_gpu_check_passes_its_cpu_subset(capsys):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    gpu_check = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = gpu_check  # its dataclass looks its module up there
    spec.loader.exec_module(gpu_check)
    status = gpu_check.main(["--device", "cpu"])
    out = capsys.readouterr().out
    print(out)
    assert status == 0, out
    assert out.count(" pass ") == len(gpu_check.cases("cpu", False)) - 1
    assert out.count("refused (expected)") == 1

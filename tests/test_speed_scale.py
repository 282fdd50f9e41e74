import json
import subprocess
import sys

import pytest
import torch

from ganforge.models import build_model
from ganforge.training.bench import bench_training_step
from ganforge.snapshots import load_snapshot

ARGS = ["--model", "began", "--data", "mnist", "--resolution", "16", "--batch", "16", "--base-channels", "8",
        "--tick", "0.16", "--snap", "0.16", "--sample-every", "0.32", "--device", "cpu", "--quiet"]


def run(cmd):
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def torchrun(n, *args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m", "ganforge",
            "train", *ARGS, *args]


def assert_close_states(a, b):
    assert a["step"] == b["step"]
    for k in a["state"]:
        torch.testing.assert_close(a["state"][k].float(), b["state"][k].float(), atol=1e-5, rtol=1e-4, msg=k)


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_with_the_combined_batch(tmp_path):
    metrics = ["--metrics", "swd,msssim", "--metrics-every", "0.16", "--metrics-n", "200"]  # evaluated by both ranks
    run(torchrun(2, "--kimg", "0.32", *metrics, "--outdir", str(tmp_path / "two")))
    run([sys.executable, "-m", "ganforge", "train", *ARGS, "--kimg", "0.32", *metrics, "--outdir", str(tmp_path / "one")])
    two, one = load_snapshot(next((tmp_path / "two").iterdir())), load_snapshot(next((tmp_path / "one").iterdir()))
    assert_close_states(one, two)
    assert abs(one["state"]["k_t"].item() - two["state"]["k_t"].item()) < 1e-6  # k_t follows the global batch
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["00000-began-mnist"]  # only rank 0 writes
    rows = {name: [json.loads(line) for line in (next((tmp_path / name).iterdir()) / "metric-swd.jsonl").open()]
            for name in ("one", "two")}
    assert [r["kimg"] for r in rows["two"]] == [0.16, 0.32]  # one row per evaluation: rank 0 logs
    for a, b in zip(rows["one"], rows["two"]):  # the same samples, up to the weights' 1e-5
        assert b["swd_avg_x1e3"] == pytest.approx(a["swd_avg_x1e3"], rel=0.02) and b["n_fake"] == 200


@pytest.mark.slow
def test_resume_with_a_different_number_of_processes(tmp_path):
    run(torchrun(2, "--kimg", "0.16", "--outdir", str(tmp_path / "mixed")))
    mixed = next((tmp_path / "mixed").iterdir())
    run([sys.executable, "-m", "ganforge", "train", "--resume", str(mixed), "--kimg", "0.32", "--quiet"])
    run([sys.executable, "-m", "ganforge", "train", *ARGS, "--kimg", "0.32", "--outdir", str(tmp_path / "one")])
    assert_close_states(load_snapshot(next((tmp_path / "one").iterdir())), load_snapshot(mixed))


@pytest.mark.slow
def test_gpus_option_launches_torchrun(tmp_path):
    run([sys.executable, "-m", "ganforge", "train", *ARGS, "--kimg", "0.064", "--gpus", "2",
         "--outdir", str(tmp_path)])
    assert load_snapshot(next(tmp_path.iterdir()))["step"] == 4


def rank_0_of(monkeypatch, world_size: int) -> None:
    """This process as rank 0 of `world_size`, with no others: the checks before the first step run,
    and what the others would answer is rank 0's own."""
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr("ganforge.training.distributed.dist.init_process_group", lambda *a, **k: None)
    monkeypatch.setattr("ganforge.training.loop.broadcast_object", lambda obj, world_size: obj)
    monkeypatch.setattr("ganforge.training.loop.gather_object", lambda obj, world_size: [obj] * world_size)


def test_batch_must_divide_among_processes(tmp_path, monkeypatch):
    from ganforge.training import TrainingError, TrainOptions, train

    rank_0_of(monkeypatch, 3)
    with pytest.raises(TrainingError, match="batch 16 at 32x32 does not divide among 3 processes"):
        train(TrainOptions(batch=16, kimg=0.016, outdir=str(tmp_path)), progress=False)
    assert not list(tmp_path.iterdir())


def test_sync_bn_is_refused_off_cuda_with_several_processes(tmp_path, monkeypatch):
    from ganforge.training import TrainingError, TrainOptions, train

    rank_0_of(monkeypatch, 2)
    with pytest.raises(TrainingError, match="--sync-bn: needs CUDA GPUs"):
        train(TrainOptions(batch=16, kimg=0.016, sync_bn=True, device="cpu", outdir=str(tmp_path)), progress=False)
    assert not list(tmp_path.iterdir())


def test_every_stage_batch_is_checked_before_the_first_step(tmp_path, monkeypatch):
    """The cpu preset's batch is 32 up to 32x32 and 16 at 64x64: on 32 processes the run is refused
    before its first step, not when it reaches 64x64."""
    from PIL import Image

    from ganforge.training import TrainingError, TrainOptions, train

    for i in range(4):
        Image.new("RGB", (64, 64), (60 * i, 0, 0)).save(tmp_path / f"{i}.png")
    rank_0_of(monkeypatch, 32)
    monkeypatch.setattr("ganforge.training.loop.broadcast_object", lambda obj, world: obj)  # rank 0's file list
    opts = TrainOptions(model="pggan", data=str(tmp_path), resolution=64, kimg=80, outdir=str(tmp_path / "runs"),
                        model_opts={"preset": "cpu", "fmap_max": 8})
    with pytest.raises(TrainingError, match="batch 16 at 64x64 does not divide among 32 processes"):
        train(opts, progress=False)
    assert not (tmp_path / "runs").exists()


def test_accumulated_micro_batches_equal_one_batch():
    """BEGAN (no BatchNorm, no minibatch statistics): 4 micro-batches of 4 give the step of one batch
    of 16, with the same noise; its k_t, from the logged losses, follows the whole batch too."""
    from ganforge.models import Schedule, StepContext, build_model
    from ganforge.training.step import training_step

    def step(rounds):
        torch.manual_seed(0)
        model = build_model("began", dict(resolution=16, channels=1, base_channels=4))
        pool = torch.rand(64, model.z_dim, generator=torch.Generator().manual_seed(1)) * 2 - 1
        drawn = [0]

        def latents(n):
            drawn[0] += n
            return pool[drawn[0] - n:drawn[0]]

        optimizers = {k: torch.optim.SGD(getattr(model, k).parameters(), lr=0.1) for k in ("G", "D")}
        ctx = StepContext(latents=latents, schedule=Schedule(16, 16))
        reals = torch.rand(16, 1, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
        scalers = {k: torch.amp.GradScaler("cpu", enabled=False) for k in ("G", "D")}
        result = training_step(model, optimizers, scalers, reals, torch.zeros(16, dtype=torch.long), ctx, "fp32",
                               torch.device("cpu"), rounds=rounds)
        return model, result

    one, result_one = step(1)
    four, result_four = step(4)
    for (name, a), b in zip(one.named_parameters(), four.parameters()):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5, msg=name)
    assert result_one.losses.keys() == result_four.losses.keys() == {"D", "G"}
    assert result_one.stats.keys() == result_four.stats.keys()
    for key in result_one.losses:
        torch.testing.assert_close(result_one.losses[key], result_four.losses[key], atol=1e-6, rtol=1e-5, msg=key)
    for key in result_one.stats:
        torch.testing.assert_close(result_one.stats[key], result_four.stats[key], atol=1e-6, rtol=1e-5, msg=key)
    assert result_one.real_scores.shape == result_four.real_scores.shape == (16,)
    assert one.k_t.item() == pytest.approx(four.k_t.item(), abs=1e-9)


def test_batch_gpu_trains_and_may_change_on_resume(tmp_path):
    from ganforge.snapshots import load_snapshot
    from ganforge.training import TrainOptions, train

    opts = dict(model="began", data="mnist", resolution=16, batch=16, model_opts={"base_channels": 4}, tick=0.032,
                augment="none")
    run = train(TrainOptions(**opts, batch_gpu=4, kimg=0.032, outdir=str(tmp_path)), progress=False)
    resumed = train(TrainOptions(**opts, batch_gpu=8, kimg=0.064), resume=str(run), explicit={"kimg", "batch_gpu"},
                    progress=False)
    snap = load_snapshot(resumed)
    assert snap["images_seen"] == 64 and snap["options"]["batch_gpu"] == 8


@pytest.mark.parametrize("model,opts", [("cdcgan", {}), ("began", {"base_channels": 8}),
                                        ("pggan", {"fmap_max": 16}), ("dfgan", {"nf": 4, "text_encoder": "bilstm"})])
def test_bench_times_a_full_step_and_counts_flops(model, opts):
    r = bench_training_step(model, 16, 4, steps=1, warmup=1, device="cpu", channels=3, model_opts=opts,
                            channels_last=True, count_flops=True)
    assert r["img_per_sec"] > 0 and r["gflop_per_step"] > 0 and r["tflop_per_sec"] > 0


def test_bf16_autocast_step_with_gradient_penalty_runs():
    r = bench_training_step("pggan", 16, 4, "bf16", steps=1, warmup=1, device="cpu", model_opts={"fmap_max": 16})
    assert r["img_per_sec"] > 0


@pytest.mark.parametrize("resolution,gflop", [(32, 12.8), (64, 27.3), (256, 56.3), (1024, 85.4)])
def test_pggan_forward_flops_match_the_reference_networks(resolution, gflop):
    """G and D forwards per image, counted on the meta device (no compute), as the reference networks' table (unfused)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build_model("pggan", dict(resolution=resolution, channels=3, fused_min=4096))
        with FlopCounterMode(display=False) as g:
            images = model.G(torch.randn(1, 512))
        with FlopCounterMode(display=False) as d:
            model.D(images)
    assert g.get_total_flops() / 1e9 == pytest.approx(gflop, abs=0.06)
    assert d.get_total_flops() / 1e9 == pytest.approx(gflop, abs=0.06)


def test_compile_keeps_double_backward_networks_eager_and_snapshot_keys():
    from ganforge.hardware import compile_networks

    model = build_model("pggan", dict(resolution=8, channels=3, fmap_max=16))
    keys = set(model.state_dict())
    notes = compile_networks(model)  # compiles lazily: nothing runs here
    assert notes[0] == "G compiled" and notes[1].startswith("D stays eager")
    assert set(model.state_dict()) == keys

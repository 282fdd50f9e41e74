"""PGGAN beside pytorch_GAN_zoo's, on the same images, at equal images per phase, on this machine.

    git clone https://github.com/facebookresearch/pytorch_GAN_zoo ZOO
    python benchmarks/pggan_reference.py --zoo ZOO --data DIR --resolution 32 --seeds 0 1 --workdir W

Trains the zoo's ProgressiveGANTrainer (its code, run from the checkout) and `ganforge train --model
pggan` on the images of DIR (read as ganforge reads a user's folder: transparency composited on
white, centre-cropped, box-filtered to each resolution), with the same settings (printed as a table
first): feature maps, latent size, batch per resolution, images per fade-in and per stabilisation,
Adam (lr 0.001, betas 0 / 0.99), WGAN-GP (lambda 10) + drift 0.001, minibatch stddev (groups of 4),
no augmentation, no flips. After each resolution's stabilisation, 1,000 samples of each
implementation's generator, and 1,000 of its EMA, are scored with ganforge's SWD (the official code's, pinned in
tests/test_metric_fixtures.py) against the same 1,000 real images at --resolution (samples of lower
phases upscaled bilinearly, as benchmarks/quality_cpu.py does); the floor is 1,000 other real images.
One JSON line per (implementation, seed) with SWD x1e3 after each phase (G and EMA), the command's wall time
(start-up and data loading included; for the zoo, less the time this script spends drawing its
scored samples) and img/s of each resolution's training (fade-in and stabilisation); then a table.
Each arm runs in its own process, one after another (never two at once), and writes its samples and
times to WORKDIR/ARM-seedS/: an arm found finished there is scored again, not trained again.

What differs by design, and stays (each side as its authors wrote it): the zoo restarts its EMA from
G and its Adam state at every growth, blends alpha in steps (here one per iteration), uses He's gain
for every layer (toRGB and the first dense layer included), groups the minibatch stddev by
consecutive samples with the unbiased variance, and does not blend D at the 8x8 fade-in;
ganforge keeps one EMA through growth, with a ramp-up (half-life at most 5% of the images seen), and
uses the official gains. The zoo's losses are sums over the batch where ganforge's are means: under
Adam the same step.

The adapter (below, `zoo_worker`) gives the zoo the images as tensors instead of its folder reader,
loads them in the training process (num_workers 0, as ganforge on a CPU), lets its EMA generator
take a blending factor on a CPU (it reaches for `avgG.module`, which only DataParallel has) and gives
Adam its betas as floats (newer torch refuses its [0, 0.99]). The zoo imports h5py: `pip install h5py`.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ganforge.data import load_dataset, to_uint8  # noqa: E402
from ganforge.inference import load_model  # noqa: E402
from ganforge.metrics.swd import swd  # noqa: E402

N_SCORED = 1000
SAMPLE_SEED = 7


def phases(resolution: int) -> list[int]:
    return [4 * 2 ** i for i in range(int(math.log2(resolution)) - 1)]


def settings_table(args) -> list[tuple[str, str, str]]:
    batches = ", ".join(f"{r}: {args.batch[r]}" for r in phases(args.resolution))
    return [
        ("feature maps (every resolution)", f"{args.fmap}", f"depthScales [{args.fmap}] x {len(phases(args.resolution))}"),
        ("latent size", f"{args.z_dim}", f"dimLatentVector {args.z_dim}"),
        ("batch per resolution", batches, "miniBatchScheduler, the same"),
        ("images per fade-in / stabilisation", f"{args.fade_kimg} / {args.stab_kimg} kimg (4x4: stabilisation only)",
         "alphaNJumps x alphaSizeJumps / maxIterAtScale, the same images"),
        ("optimiser", "Adam lr 0.001, betas (0, 0.99)", "the same (its default)"),
        ("loss", "WGAN-GP lambda 10 + drift 0.001, means", "WGANGP lambdaGP 10, epsilonD 0.001, sums"),
        ("EMA", "0.999 per step, ramp-up, kept through growth", "0.999 per step, restarted at each growth"),
        ("augmentation, flips", "none (--augment none --no-xflip)", "none"),
    ]


# --- the zoo's side -------------------------------------------------------------------------------

def zoo_worker(args) -> None:
    """Train the zoo's PGGAN (run in its own process): writes the samples of each phase and the times."""
    sys.path.insert(0, str(Path(args.zoo).resolve()))
    import models.trainer.progressive_gan_trainer as zoo_trainer  # the checkout's code
    from models.progressive_gan import ProgressiveGAN

    class ProgressiveGANFloatBetas(ProgressiveGAN):
        # Its Adam betas [0, 0.99] mix an int and a float, which torch >= 2.6 refuses: the same values as floats.
        def getOptimizerD(self):
            return torch.optim.Adam([p for p in self.netD.parameters() if p.requires_grad], betas=(0.0, 0.99),
                                    lr=self.config.learningRate)

        def getOptimizerG(self):
            return torch.optim.Adam([p for p in self.netG.parameters() if p.requires_grad], betas=(0.0, 0.99),
                                    lr=self.config.learningRate)

    zoo_trainer.ProgressiveGAN = ProgressiveGANFloatBetas
    ProgressiveGANTrainer = zoo_trainer.ProgressiveGANTrainer

    out = Path(args.worker_out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    reals = load_dataset(args.data, args.resolution, 3).images
    res_list = phases(args.resolution)
    iters = lambda kimg, res: round(kimg * 1000 / args.batch[res])  # noqa: E731
    config = {
        "depthScales": [args.fmap] * len(res_list),
        "dimLatentVector": args.z_dim,
        "miniBatchSize": args.batch[4],
        "maxIterAtScale": [iters(args.stab_kimg, 4)] + [iters(args.fade_kimg + args.stab_kimg, r) for r in res_list[1:]],
        "alphaJumpMode": "linear",
        "alphaNJumps": [0] + [iters(args.fade_kimg, r) for r in res_list[1:]],
        "alphaSizeJumps": [0] + [1] * (len(res_list) - 1),
        "lambdaGP": 10.0, "epsilonD": 0.001, "baseLearningRate": 0.001, "miniBatchStdDev": True,
    }
    timings = {"phase_seconds": {}, "phase_images": {}, "sampling_seconds": 0.0}

    class ZooOnTensors(ProgressiveGANTrainer):
        def getDataset(self, scale, size=None):
            side = (size or self.model.getSize())[0] if not isinstance(size, int) else size
            images = F.adaptive_avg_pool2d(reals.float(), side) / 127.5 - 1.0  # box filter, as ganforge's
            return torch.utils.data.TensorDataset(images, torch.zeros(len(images), dtype=torch.long))

        def getDBLoader(self, scale):
            return torch.utils.data.DataLoader(self.getDataset(scale), batch_size=self.modelConfig.miniBatchSize,
                                               shuffle=True, num_workers=0)

        def initModel(self):
            super().initModel()
            self.give_ema_a_module()

        def give_ema_a_module(self):
            # The zoo sets the EMA's alpha through avgG.module, which exists only under DataParallel (GPUs).
            object.__setattr__(self.model.avgG, "module", self.model.avgG)

        def saveBaseConfig(self, path):
            pass

        def saveCheckpoint(self, outDir, outLabel, scale, iter):  # called at the end of every scale
            res, sampling_start = res_list[scale], time.perf_counter()
            timings["phase_seconds"][res] = sampling_start - self.phase_start
            timings["phase_images"][res] = iter * args.batch[res]
            z = torch.randn(N_SCORED, args.z_dim, generator=torch.Generator().manual_seed(SAMPLE_SEED))
            for which, ema in (("ema", True), ("G", False)):
                with torch.no_grad():
                    images = torch.cat([self.model.test(z[i:i + 100], getAvG=ema) for i in range(0, N_SCORED, 100)])
                torch.save(to_uint8(images), out / f"samples-{res}-{which}.pt")
            self.phase_start = time.perf_counter()
            timings["sampling_seconds"] += self.phase_start - sampling_start

        def updateDatasetForScale(self, scale):
            super().updateDatasetForScale(scale)
            if scale > 0:
                self.give_ema_a_module()  # the zoo rebuilt its EMA when it added the scale

    trainer = ZooOnTensors(args.data, useGPU=False, lossIterEvaluation=500, saveIter=10 ** 9,
                           checkPointDir=str(out), modelLabel="zoo", config=config,
                           miniBatchScheduler={i: args.batch[r] for i, r in enumerate(res_list)})
    trainer.phase_start = time.perf_counter()
    trainer.train()
    (out / "timings.json").write_text(json.dumps(timings))


def run_zoo(args, seed: int, out: Path) -> dict:
    command = [sys.executable, __file__, "--zoo-worker", "--worker-out", str(out), "--seed", str(seed),
               *common_arguments(args)]
    start = time.perf_counter()
    with open(out.parent / f"{out.name}.log", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    timings = json.loads((out / "timings.json").read_text())
    # The whole command, as ganforge's, less the samples this script draws for scoring.
    return {"wall_seconds": time.perf_counter() - start - timings["sampling_seconds"],
            "phase_seconds": timings["phase_seconds"], "phase_images": timings["phase_images"]}


# --- ganforge's side ------------------------------------------------------------------------------

def run_ganforge(args, seed: int, out: Path) -> dict:
    total_kimg = args.stab_kimg + (len(phases(args.resolution)) - 1) * (args.fade_kimg + args.stab_kimg)
    command = [sys.executable, "-m", "ganforge", "train", "--model", "pggan", "--data", args.data,
               "--resolution", str(args.resolution), "--channels", "3", "--kimg", str(total_kimg),
               "--seed", str(seed), "--augment", "none", "--no-xflip", "--outdir", str(out), "--quiet",
               "--snap", str(math.gcd(int(args.fade_kimg * 10), int(args.stab_kimg * 10)) / 10),
               "--model-opt", "preset=cpu", "--model-opt", f"fmap_max={args.fmap}", "--model-opt", f"z_dim={args.z_dim}",
               "--model-opt", f"fade_kimg={args.fade_kimg}", "--model-opt", f"stab_kimg={args.stab_kimg}"]
    start = time.perf_counter()
    with open(out.parent / f"{out.name}.log", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    (run,) = [d for d in out.iterdir() if d.is_dir()]
    write_ganforge_samples(run, out)
    return {"wall_seconds": wall, **ganforge_phase_times(run)}


def write_ganforge_samples(run: Path, out: Path) -> None:
    """G's and its EMA's samples at the end of each resolution's stabilisation: the last snapshot of each
    phase (one taken a step into the next fade-in holds the stabilised phase, sampled at alpha 1)."""
    for snapshot in sorted(run.glob("snapshot-*.pt")):
        model = load_model(snapshot)
        grown, alpha = int(model.grown_resolution), float(model.grown_alpha)
        size = grown // 2 if alpha < 0.05 else grown if alpha == 1.0 else None
        if size is None:
            continue
        z = torch.randn(N_SCORED, model.z_dim, generator=torch.Generator().manual_seed(SAMPLE_SEED))
        for which, ema in (("ema", True), ("G", False)):
            with torch.no_grad():
                images = torch.cat([model.generate(z[i:i + 100], ema=ema, resolution=size)
                                    for i in range(0, N_SCORED, 100)])
            torch.save(to_uint8(images), out / f"samples-{size}-{which}.pt")  # a later snapshot of the phase replaces it


def ganforge_phase_times(run: Path) -> dict:
    """Seconds and images per resolution (fade-in and stabilisation), from the run's stats rows: each
    tick's images over its img/s (a tick that spans a growth counts for the resolution it ends at)."""
    seconds, images, last_kimg = {}, {}, 0.0
    for line in (run / "stats.jsonl").read_text().splitlines():
        row = json.loads(line)
        res, tick_images = int(row["resolution"]), (row["kimg"] - last_kimg) * 1000
        seconds[res] = seconds.get(res, 0.0) + tick_images / row["img_per_sec"]
        images[res] = images.get(res, 0) + round(tick_images)
        last_kimg = row["kimg"]
    return {"phase_seconds": seconds, "phase_images": images}


# --- scoring --------------------------------------------------------------------------------------

def score(out: Path, which: str, real: torch.Tensor, resolution: int) -> dict[int, float]:
    """SWD x1e3 of each phase's samples (`which`: G or ema) against `real`, lower phases upscaled."""
    scores = {}
    for res in phases(resolution):
        path = out / f"samples-{res}-{which}.pt"
        if not path.exists():
            continue
        images = torch.load(path, weights_only=True)[:len(real)].float()
        if res < resolution:
            images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False)
        scores[res] = round(swd(real, images.round().clamp(0, 255).to(torch.uint8))["swd_avg_x1e3"], 1)
    return scores


def common_arguments(args) -> list[str]:
    return ["--zoo", str(args.zoo), "--data", args.data, "--resolution", str(args.resolution),
            "--fade-kimg", str(args.fade_kimg), "--stab-kimg", str(args.stab_kimg), "--fmap", str(args.fmap),
            "--z-dim", str(args.z_dim)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", required=True, help="a checkout of facebookresearch/pytorch_GAN_zoo")
    p.add_argument("--data", required=True, help="a folder of RGB(A) images")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--fade-kimg", type=float, default=10.0)
    p.add_argument("--stab-kimg", type=float, default=10.0)
    p.add_argument("--fmap", type=int, default=64, help="feature maps at every resolution")
    p.add_argument("--z-dim", type=int, default=128)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--arms", nargs="+", default=["zoo", "ganforge"], choices=["zoo", "ganforge"])
    p.add_argument("--workdir", default="pggan-reference")
    p.add_argument("--zoo-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    from ganforge.models.pggan import PRESETS
    args.batch = PRESETS["cpu"]["batch"]  # ganforge's cpu preset; the zoo is given the same
    if args.zoo_worker:
        zoo_worker(args)
        return
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    print("| setting | ganforge | pytorch_GAN_zoo |\n|---|---|---|")
    for name, ours, theirs in settings_table(args):
        print(f"| {name} | {ours} | {theirs} |")
    reals = load_dataset(args.data, args.resolution, 3).images
    pick = torch.randperm(len(reals), generator=torch.Generator().manual_seed(0))
    n = min(N_SCORED, len(reals) // 2)
    real_a, real_b = reals[pick[:n]], reals[pick[n:2 * n]]
    floor = round(swd(real_a, real_b)["swd_avg_x1e3"], 1)
    print(json.dumps({"real_vs_real_floor_swd_x1e3": floor, "n": n, "threads": torch.get_num_threads()}), flush=True)
    results = []
    for seed in args.seeds:
        for arm in args.arms:
            out = work / f"{arm}-seed{seed}"
            finished = out / "arm.json"
            if not finished.exists():
                if out.exists() and any(out.iterdir()):
                    raise SystemExit(f"{out} holds an unfinished arm: remove it, or give another --workdir")
                out.mkdir(parents=True, exist_ok=True)
                times = (run_zoo if arm == "zoo" else run_ganforge)(args, seed, out)
                finished.write_text(json.dumps(times))
            times = json.loads(finished.read_text())
            line = {"arm": arm, "seed": seed,
                    "swd_x1e3_after_phase": {which: score(out, which, real_a, args.resolution) for which in ("G", "ema")},
                    "wall_s": round(times["wall_seconds"], 1),
                    "img_per_s": {res: round(times["phase_images"][res] / max(s, 1e-9), 1)
                                  for res, s in sorted(times["phase_seconds"].items(), key=lambda kv: int(kv[0]))}}
            results.append(line)
            print(json.dumps(line), flush=True)
    print("| phase | " + " | ".join(f"{r['arm']} seed {r['seed']}, G / EMA" for r in results) + " |")
    print("|---|" + "---|" * len(results))
    for res in phases(args.resolution):
        print(f"| {res}x{res} | " + " | ".join(" / ".join(str(r["swd_x1e3_after_phase"][which].get(res, "-"))
                                                          for which in ("G", "ema")) for r in results) + " |")
    print("| wall time | " + " | ".join(f"{r['wall_s'] / 60:.1f} min" for r in results) + " |")


if __name__ == "__main__":
    main()

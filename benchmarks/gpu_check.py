"""The check to run when a GPU is lent: everything that only a GPU can tell, in under 10 minutes.

    python -m benchmarks.gpu_check --out /tmp/gpu_check              # on the GPU machine
    python -m benchmarks.gpu_check --device cpu --quick --out DIR      # the same steps, tiny, on a CPU

Steps (each one row or more of one markdown table, also written to OUT/gpu_check.md):
  1. parity    the fused Triton kernels against the PyTorch reference on real CUDA: forward, gradient
               and gradient of gradient, fp32 / fp16 / bf16 (`benchmarks.bench_ops --parity`);
  2. training  `train_gan.py` (baseline variant) for a few hundred images at 64² and 256² ('auto': fp16 in the 4 highest
               resolutions, clamped, as the reference; and 64² with --precision bf16): s/kimg of the
               last tick and peak memory, from the run's stats.jsonl;
  3. sampling  `sample_patients.py` from the 64² run: patients per second;
  4. study     one training step and the per-slice inference of the demo's U-Net at 256² (batch 16).
--quick shrinks every size (16²/32², the tiny preset, a few kimg) so the script itself can be tested
anywhere; its numbers mean nothing then.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def command(argv: list[str]) -> None:
    """Run one of the project's commands from the repository root; its stderr in the error if it fails."""
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv[1:3])} ... exited with {done.returncode}:\n{done.stderr[-2000:]}")


def train(out: Path, resolution: int, kimg: float, device: str, quick: bool, precision: str = "fp32") -> dict:
    """One train_gan.py run; the last tick's sec/kimg and peak memory."""
    run = out / f"train_{resolution}_{precision}"
    argv = [sys.executable, "train_gan.py", "--variant", "baseline", "--data", "phantoms", "--out", str(run),
            "--resolution", str(resolution), "--kimg", str(kimg), "--tick", str(kimg / 2), "--metrics", "none",
            "--no-tensorboard", "--device", device, "--precision", precision]
    if quick:
        argv += ["--cfg", "tiny", "--batch", "8", "--batch-gpu", "8"]
    started = time.time()
    command(argv)
    ticks = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines() if line.strip()]
    return {"run": run, "wall_s": time.time() - started, "s_per_kimg": ticks[-1]["timing/sec_per_kimg"],
            "peak_gb": ticks[-1]["resources/peak_memory_gb"]}


def sample(out: Path, run: Path, patients: int, device: str) -> float:
    """Patients per second of sample_patients.py from ``run`` (its own start-up included)."""
    started = time.time()
    command([sys.executable, "sample_patients.py", "--gan", str(run), "--patients", str(patients),
             "--out", str(out / "samples"), "--keep-empty", "--quiet", "--device", device, "--grid", "generator"])
    return patients / (time.time() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="scratch folder (runs, samples) and gpu_check.md")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: test the script, not the machine")
    parser.add_argument("--skip-parity", action="store_true", help="leave out step 1")
    args = parser.parse_args(argv)
    import torch

    from segmentation.study.study_config import UNetConfig
    from segmentation.study.unet import measure_step_seconds

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here: run it where a GPU is lent, or with --device cpu --quick")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [("what", "setting", "result")]
    if not args.skip_parity:
        from benchmarks.bench_ops import parity_table
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            parity_table(["fp32", "fp16", "bf16"])
        for line in text.getvalue().splitlines():
            parts = line.split()
            if len(parts) == 7 and parts[0] in ("bias_act", "upfirdn2d"):
                rows.append((f"parity {parts[0]}", parts[1], f"fwd {parts[3]}, grad {parts[4]}, grad² {parts[5]} "
                                                              f"(max rel {parts[6]}, {parts[2]} cases)"))
            elif line.startswith("parity: skipped"):
                rows.append(("parity", "-", line))
    small, large, kimg = (16, 32, 0.016) if args.quick else (64, 256, 0.4)
    runs = {}
    for resolution, precision in ((small, "fp32"), (small, "bf16"), (large, "fp32")):
        result = train(args.out, resolution, kimg if resolution == small else kimg / 2, args.device, args.quick,
                       precision)
        runs[(resolution, precision)] = result
        rows.append((f"train_gan.py {resolution}²", precision,
                     f"{result['s_per_kimg']:.1f} s/kimg, peak {result['peak_gb']:.2f} GB ({result['wall_s']:.0f} s)"))
    rate = sample(args.out, runs[(small, "fp32")]["run"], 4 if args.quick else 32, args.device)
    rows.append((f"sample_patients.py {small}²", "baseline of step 2's fp32 run", f"{rate:.2f} patients/s"))
    unet = UNetConfig(channels=(16, 32, 64), strides=(2, 2), num_res_units=1)
    resolution = 32 if args.quick else 256
    step, per_slice = measure_step_seconds(unet, 4, 6, resolution, 16, torch.device(args.device))
    rows.append((f"study U-Net {resolution}²", "demo's U-Net, batch 16",
                 f"{1000 * step:.1f} ms/step, {1000 * per_slice:.2f} ms/slice inference"))
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    table = [f"GPU check on {device}, torch {torch.__version__}", "",
             "| " + " | ".join(rows[0]) + " |", "|---|---|---|"] + ["| " + " | ".join(r) + " |" for r in rows[1:]]
    (args.out / "gpu_check.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())

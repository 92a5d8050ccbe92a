"""Two CPU processes (torchrun, Gloo) train the same model as one process with the same global batch."""
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training import checkpoint as ckpt
from training.cli_train import main
from training.distributed import DistContext

from tiny import TINY_GAN_ARGS

REPO = Path(__file__).resolve().parent.parent
ARGS = TINY_GAN_ARGS + ["--set", "loss.r1_interval=2", "--tick", "0.008", "--variant", "conditional",
                        "--cond", "slice-position", "--p", "0.2", "--kimg", "0.016", "--device", "cpu"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stats_lines(run: Path) -> list[str]:
    """The records of a run's stats.jsonl (one per tick)."""
    return (run / "stats.jsonl").read_text().splitlines()


def torchrun_two_processes(args: list[str], cwd: Path) -> None:
    """Run train_gan.py ``args`` as two Gloo processes on this CPU; fails the test on a non-zero exit."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(REPO / "train_gan.py"), *args]
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_single_process_context_is_a_no_op():
    ctx = DistContext()
    t = torch.tensor([1.0, 2.0])
    assert ctx.all_reduce_sum(t) is t and ctx.is_main and not ctx.distributed
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([1.0, float("nan"), float("inf")])
    ctx.sync_gradients([p])
    assert torch.equal(p.grad, torch.tensor([1.0, 0.0, 0.0]))      # non-finite entries zeroed


def test_two_gloo_processes_match_one_process(tmp_path, phantoms):
    data = phantoms
    single, double = tmp_path / "single", tmp_path / "double"
    assert main(ARGS + ["--data", data, "--out", str(single)]) == 0
    torchrun_two_processes(ARGS + ["--data", data, "--out", str(double)], tmp_path)
    a = ckpt.read_snapshot(ckpt.latest_good_snapshot(single))
    b = ckpt.read_snapshot(ckpt.latest_good_snapshot(double))
    assert b.documents["progress"]["world_size"] == 2 and b.documents["progress"]["nimg"] == 16
    for name in ("G", "G_ema", "D"):
        for key, value in a.tensors[name].items():
            if re.search(r"_(avg|ema)$", key):
                # running statistics (w_avg) are tracked per process over its own micro-batches,
                # as in StyleGAN2-ADA; they are not learned weights
                continue
            other = b.tensors[name][key]
            assert torch.allclose(value, other, rtol=1e-4, atol=1e-5), (name, key,
                                                                         (value - other).abs().max())
    assert a.documents["progress"]["augment_p"] == b.documents["progress"]["augment_p"]
    assert len(ckpt.list_snapshots(double)) == 1                  # rank 0 alone wrote snapshots
    assert len(_stats_lines(double)) == len(_stats_lines(single)) == 2   # and logged, once per tick


@pytest.mark.slow
def test_two_process_run_resumes_exactly(tmp_path, phantoms):
    data = phantoms
    straight, split = tmp_path / "straight", tmp_path / "split"
    torchrun_two_processes(ARGS + ["--data", data, "--out", str(straight)], tmp_path)
    half = [a if a != "0.016" else "0.008" for a in ARGS]   # --kimg 0.016 -> 0.008: stop half way
    torchrun_two_processes(half + ["--data", data, "--out", str(split)], tmp_path)
    torchrun_two_processes(["--resume", str(split), "--kimg", "0.016", "--threads", "1", "--no-tensorboard"],
                           tmp_path)
    a = ckpt.read_snapshot(ckpt.latest_good_snapshot(straight))
    b = ckpt.read_snapshot(ckpt.latest_good_snapshot(split))
    assert b.documents["progress"]["world_size"] == 2 and b.documents["progress"]["nimg"] == 16
    for name in ("G", "G_ema", "D", "optim_G", "optim_D"):
        for key, value in a.tensors[name].items():
            assert torch.equal(value, b.tensors[name][key]), (name, key)
    assert a.documents["progress"]["augment_p"] == b.documents["progress"]["augment_p"]

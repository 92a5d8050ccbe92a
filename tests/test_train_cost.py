"""What a GAN configuration costs before the first step, and 'auto' narrowed for a CPU."""
import pytest
import torch

from training import cost
from training.config import load_preset, resolve_config


def _auto(resolution: int):
    cfg = load_preset("auto")
    cfg.resolution = resolution
    return resolve_config(cfg)


def test_flops_grow_with_the_square_of_the_width():
    from gan.config import NetworkConfig

    narrow = cost.forward_counts("conditional", NetworkConfig(resolution=32, channel_base=512, channel_max=16), 2, 3)
    wide = cost.forward_counts("conditional", NetworkConfig(resolution=32, channel_base=1024, channel_max=32), 2, 3)
    # 3x3 convolutions dominate: doubling every width multiplies their FLOPs by ~4
    assert 3.0 < wide["D"][1] / narrow["D"][1] < 4.2
    assert 2.5 < wide["G"][1] / narrow["G"][1] < 4.2
    assert wide["D"][2] > narrow["D"][2] and wide["D"][0] > 3 * narrow["D"][0]


def test_cpu_auto_narrows_the_network_to_the_time_aim(monkeypatch):
    monkeypatch.setattr(cost, "measure_conv_gflops", lambda device, repeats=3: 100.0)
    cfg = _auto(64)
    full = cost.estimate_training_cost(cfg, 4, 6, torch.device("cpu"), machine_gflops=100.0)
    fitted, estimate = cost.fit_auto_to_cpu(cfg, 4, 6, torch.device("cpu"))
    assert full.s_per_kimg > cost.CPU_AUTO_S_PER_KIMG >= estimate.s_per_kimg
    assert fitted.network.channel_max < cfg.network.channel_max
    assert fitted.network.channel_base == 32 * fitted.network.channel_max
    assert fitted.batch == cfg.batch and fitted.batch_gpu <= cost.CPU_AUTO_MICRO_BATCH
    assert fitted.batch % fitted.batch_gpu == 0 and estimate.memory_gb < full.memory_gb


def test_cpu_auto_refuses_with_the_estimate_and_what_to_do(monkeypatch):
    monkeypatch.setattr(cost, "measure_conv_gflops", lambda device, repeats=3: 0.01)
    with pytest.raises(ValueError, match=r"too slow for this CPU.*s/kimg.*--resolution 64.*--cfg tiny"):
        cost.fit_auto_to_cpu(_auto(128), 4, 6, torch.device("cpu"))


def test_cpu_auto_applies_only_to_new_auto_runs_whose_width_is_free():
    from training.cli_train import _cpu_auto, build_parser

    class Ctx:
        device = torch.device("cpu")

    def applies(*argv):
        return _cpu_auto(build_parser().parse_args(["--data", "phantoms", *argv]), Ctx())

    assert applies() and applies("--cfg", "auto", "--set", "loss.r1_gamma=1")
    assert not applies("--cfg", "tiny")
    assert not applies("--set", "network.channel_max=64")
    assert not applies("--batch-gpu", "4")
    assert not applies("--resume", "somewhere")

"""The tiny set-ups the suite shares: a GAN run of a few tenths of a second per step on a CPU.

16x16 slices, 16 channels at every resolution, 16-dimensional z and w, micro-batches of 2, a tick
every 4 images and no TensorBoard.  A test appends its own flags (argparse keeps the last value of a
flag given twice, so ``TINY_GAN_ARGS + ["--batch-gpu", "4"]`` changes the micro-batch).
"""
from __future__ import annotations

from gan import NetworkConfig

RESOLUTION = 16

TINY_GAN_ARGS = ["--cfg", "tiny", "--resolution", str(RESOLUTION), "--batch", "4", "--batch-gpu", "2",
                 "--set", "network.channel_base=128", "--set", "network.channel_max=16",
                 "--set", "network.z_dim=16", "--set", "network.w_dim=16",
                 "--set", "network.mbstd_group_size=2", "--tick", "0.004", "--snap", "100",
                 "--no-tensorboard", "--threads", "1"]


def tiny_network(c_dim: int, resolution: int = RESOLUTION) -> NetworkConfig:
    """The network of `TINY_GAN_ARGS` as a config, for tests that build generators directly."""
    return NetworkConfig(resolution=resolution, z_dim=16, w_dim=16, c_dim=c_dim, mapping_layers=2,
                         channel_base=128, channel_max=16)

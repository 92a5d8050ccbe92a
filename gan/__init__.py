"""stylepair GAN models: StyleGAN2 networks, the three variants, ops, losses, augmentation, metrics.

Importing this package is cheap: it loads torch and the network modules only (the fused Triton
kernels in gan.ops are compiled on first use, never at import).
"""
from gan.config import NetworkConfig
from gan.discriminator import Discriminator
from gan.mapping import MappingNetwork
from gan.masks import channels_to_labels, labels_to_channels
from gan.pair import PairSampler
from gan.synthesis import SynthesisNetwork
from gan.variants import VARIANTS, Generator, MaskEncoder, build_discriminator, build_generator

__all__ = [
    "NetworkConfig", "build_generator", "build_discriminator", "Generator", "Discriminator",
    "MappingNetwork", "SynthesisNetwork", "MaskEncoder", "PairSampler", "VARIANTS",
    "labels_to_channels", "channels_to_labels",
]

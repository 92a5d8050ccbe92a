"""Inception-v3 pool3 features (2048-d) for FID/KID from a user-given weights file.

Nothing is downloaded: the architecture is written here (Szegedy et al. 2016, "Rethinking the
Inception Architecture") and the weights come from a file the user provides.

Expected weights layout — the parameter names of the common PyTorch Inception-v3 ports, so that the
state dict of torchvision's ``inception_v3`` or of pytorch-fid's FID Inception (``pt_inception-*.pth``)
loads as it is:

* ``{block}.conv.weight`` and ``{block}.bn.{weight,bias,running_mean,running_var}``
  (``{block}.bn.num_batches_tracked`` optional) for the stem blocks ``Conv2d_1a_3x3``,
  ``Conv2d_2a_3x3``, ``Conv2d_2b_3x3``, ``Conv2d_3b_1x1``, ``Conv2d_4a_3x3`` and for every branch
  of the mixed blocks ``Mixed_5b`` ... ``Mixed_7c``, e.g. ``Mixed_5b.branch5x5_1.conv.weight``,
  ``Mixed_7c.branch3x3dbl_3b.bn.running_var`` (see :class:`InceptionV3` for every branch name);
* ``fc.*`` and ``AuxLogits.*`` (classifier heads) are accepted and ignored; any other extra key,
  a missing key or a shape mismatch is an error naming the file.

File formats: ``.safetensors`` (preferred), or a plain state dict saved with ``torch.save`` and read
with ``torch.load(weights_only=True)`` — a file that needs unpickling of arbitrary objects (and could
run code) is refused. Convert other formats once with :func:`save_inception_weights`.

Input handling (:class:`InceptionFeatures`): each of the C channels is fed as a grey image replicated
to 3 channels, resized bilinearly to 299x299, as values in [-1, 1] (the input range both weight sets
above expect at the first convolution). The C per-channel 2048-d pool3 vectors are averaged
(``channel_reduction="mean"``, D = 2048, default: keeps FID's 2048x2048 covariance affordable for
any C) or concatenated (``"concat"``, D = 2048 C: also sees which modality looks wrong).

Block variant: ``"fid"`` (default) reproduces the TensorFlow FID Inception graph that pytorch-fid
ports (average pools exclude padding; the last block max-pools its pool branch); ``"torchvision"``
is torchvision's graph. Use the variant that matches where the weights came from.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from gan.image_batches import check_image_batch

FEATURE_DIM = 2048
IGNORED_PREFIXES = ("fc.", "AuxLogits.")


class BasicConv2d(nn.Module):
    """conv (no bias) -> batch norm (eps 1e-3, inference statistics) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x: torch.Tensor, fid_variant: bool) -> torch.Tensor:
    """3x3 stride-1 average pool of the pool branches; TF's FID graph does not count the padding."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=not fid_variant)


class InceptionA(nn.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | pool-1x1 -> 224 + pool_features channels."""

    def __init__(self, in_channels: int, pool_features: int, fid_variant: bool):
        super().__init__()
        self.fid_variant = fid_variant
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool_3x3(x, self.fid_variant)),
        ], dim=1)


class InceptionB(nn.Module):
    """35 -> 17 reduction: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2 -> 480 + in_channels channels."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], dim=1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions -> 768 channels."""

    def __init__(self, in_channels: int, channels_7x7: int, fid_variant: bool):
        super().__init__()
        self.fid_variant = fid_variant
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            branch7x7dbl = layer(branch7x7dbl)
        return torch.cat([
            self.branch1x1(x), branch7x7, branch7x7dbl, self.branch_pool(_avg_pool_3x3(x, self.fid_variant)),
        ], dim=1)


class InceptionD(nn.Module):
    """17 -> 8 reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2 -> 512 + in_channels channels."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch7x7x3 = x
        for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            branch7x7x3 = layer(branch7x7x3)
        return torch.cat([
            self.branch3x3_2(self.branch3x3_1(x)), branch7x7x3, F.max_pool2d(x, 3, stride=2),
        ], dim=1)


class InceptionE(nn.Module):
    """8x8 block with expanded 1x3/3x1 filter banks -> 2048 channels.

    ``pool``: "avg" (torchvision; ``avg_exclude_pad`` in the FID graph's first E block) or "max"
    (the FID graph's last E block).
    """

    def __init__(self, in_channels: int, pool: str):
        super().__init__()
        assert pool in ("avg", "avg_exclude_pad", "max"), pool
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_1(x)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        if self.pool == "max":
            pooled = F.max_pool2d(x, 3, stride=1, padding=1)
        else:
            pooled = _avg_pool_3x3(x, fid_variant=self.pool == "avg_exclude_pad")
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3),
            self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl),
            self.branch_pool(pooled),
        ], dim=1)


class InceptionV3(nn.Module):
    """Inception-v3 up to the 2048-d global average pool ("pool3"); no classifier.

    Forward: x [N, 3, 299, 299] in [-1, 1] -> [N, 2048].
    """

    def __init__(self, block_variant: str = "fid"):
        super().__init__()
        if block_variant not in ("fid", "torchvision"):
            raise ValueError(f"InceptionV3: block_variant must be 'fid' or 'torchvision', got {block_variant!r}")
        fid = block_variant == "fid"
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32, fid_variant=fid)
        self.Mixed_5c = InceptionA(256, pool_features=64, fid_variant=fid)
        self.Mixed_5d = InceptionA(288, pool_features=64, fid_variant=fid)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128, fid_variant=fid)
        self.Mixed_6c = InceptionC(768, channels_7x7=160, fid_variant=fid)
        self.Mixed_6d = InceptionC(768, channels_7x7=160, fid_variant=fid)
        self.Mixed_6e = InceptionC(768, channels_7x7=192, fid_variant=fid)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg_exclude_pad" if fid else "avg")
        self.Mixed_7c = InceptionE(2048, pool="max" if fid else "avg")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # [N, 64, 147, 147]
        x = F.max_pool2d(x, 3, stride=2)  # [N, 64, 73, 73]
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # [N, 192, 71, 71]
        x = F.max_pool2d(x, 3, stride=2)  # [N, 192, 35, 35]
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # [N, 288, 35, 35]
        x = self.Mixed_6a(x)  # [N, 768, 17, 17]
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))
        x = self.Mixed_7a(x)  # [N, 1280, 8, 8]
        x = self.Mixed_7c(self.Mixed_7b(x))  # [N, 2048, 8, 8]
        return x.mean(dim=(2, 3))


@dataclass
class InceptionConfig:
    """How images are fed to Inception-v3 (see the module docstring)."""

    block_variant: str = "fid"  # "fid" (TF FID graph, pytorch-fid weights) or "torchvision"
    channel_reduction: str = "mean"  # "mean" (D = 2048) or "concat" (D = 2048 * C)
    resize: int = 299


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: safetensors, or a plain state dict via torch.load(weights_only=True).

    Raises ValueError naming the file if it is missing, unreadable, not a flat str -> tensor mapping,
    or needs to unpickle arbitrary objects (refused: that could execute code).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Inception weights file {path} does not exist")
    with open(path, "rb") as handle:
        head = handle.read(9)
    # safetensors = 8-byte little-endian header length, then a JSON header starting with '{'.
    if len(head) == 9 and head[8:9] == b"{":
        try:
            return safetensors.torch.load_file(str(path))
        except Exception as error:
            raise ValueError(f"Inception weights file {path} is not a valid safetensors file: {error}") from error
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"Inception weights file {path} cannot be loaded safely (only safetensors or plain "
            f"tensor state dicts are accepted; pickled objects are refused because loading them "
            f"could execute code): {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        ) from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
    ):
        raise ValueError(f"Inception weights file {path} does not hold a flat name -> tensor state dict")
    return state


class InceptionFeatures(nn.Module):
    """Inception-v3 pool3 features for images with any number of channels.

    Args:
        in_channels: C.
        config: :class:`InceptionConfig`.

    Forward: images [N, C, H, W] in [-1, 1] (H, W >= 16) -> [N, 2048] (mean) or [N, 2048 C] (concat).
    Build with random weights (tests) or, normally, with :meth:`from_weights_file`.
    """

    def __init__(self, in_channels: int, config: InceptionConfig | None = None):
        super().__init__()
        self.config = config or InceptionConfig()
        if self.config.channel_reduction not in ("mean", "concat"):
            raise ValueError(f"InceptionFeatures: channel_reduction must be 'mean' or 'concat', "
                             f"got {self.config.channel_reduction!r}")
        self.in_channels = in_channels
        self.network = InceptionV3(self.config.block_variant)
        per_channel = 1 if self.config.channel_reduction == "mean" else in_channels
        self.feature_dim = FEATURE_DIM * per_channel

    @classmethod
    def from_weights_file(
        cls, path: str | Path, in_channels: int, config: InceptionConfig | None = None
    ) -> "InceptionFeatures":
        """Build and load weights from ``path`` (layout in the module docstring); eval mode."""
        model = cls(in_channels, config)
        model.load_network_weights(read_weights_file(path), source=str(path))
        return model.eval()

    def load_network_weights(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Load an Inception-v3 state dict (classifier heads ignored); ValueError naming ``source``
        on missing or unexpected keys or mismatched shapes."""
        state = {key: value for key, value in state.items() if not key.startswith(IGNORED_PREFIXES)}
        expected = self.network.state_dict()
        optional = {key for key in expected if key.endswith("num_batches_tracked")}
        missing = sorted(set(expected) - set(state) - optional)
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"Inception weights file {source} does not match the Inception-v3 layout: "
                f"{len(missing)} missing key(s) {missing[:5]}, {len(unexpected)} unexpected key(s) {unexpected[:5]}"
            )
        wrong = [f"{key}: {tuple(state[key].shape)} != {tuple(expected[key].shape)}"
                 for key in state if state[key].shape != expected[key].shape]
        if wrong:
            raise ValueError(f"Inception weights file {source}: shape mismatch {wrong[:5]}")
        self.network.load_state_dict(state, strict=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_image_batch(images, self.in_channels, type(self).__name__)
        n, c = images.shape[:2]
        grey = images.float().reshape(n * c, 1, *images.shape[2:])
        size = self.config.resize
        grey = F.interpolate(grey, size=(size, size), mode="bilinear", align_corners=False)
        features = self.network(grey.expand(-1, 3, -1, -1)).reshape(n, c, FEATURE_DIM)
        out = features.mean(dim=1) if self.config.channel_reduction == "mean" else features.flatten(1)
        assert out.shape == (n, self.feature_dim)
        return out


def save_inception_weights(model: InceptionFeatures | InceptionV3, path: str | Path) -> Path:
    """Write the network weights as safetensors in the layout :meth:`InceptionFeatures.from_weights_file`
    reads (atomically: temp file in the same directory, then rename). Returns the path."""
    network = model.network if isinstance(model, InceptionFeatures) else model
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().contiguous().cpu() for key, value in network.state_dict().items()}
    handle, temp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        safetensors.torch.save_file(tensors, temp_name)
        os.replace(temp_name, path)
    except BaseException:
        os.unlink(temp_name)
        raise
    return path

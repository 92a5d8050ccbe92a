"""Generator adapters: one network call for a batch of slices (`BaselineSlices`, `PairSlices`), and
loading a pipeline's generators from training runs (`load_source`)."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from gan import PairSampler
from gan.variants import variant_spec
from training.checkpoint import RunInfo, load_generator
from training.data.cache import IntensityScale
from training.data.preprocess import RealGrid
from training.data.records import meaning_differences
from training.sampling.volumes import SourceDataset
from training.sampling.synthetic_dataset import GeneratorRecord


# ----------------------------------------------------------------------------------------------
# Slice generators: one network call for a batch of slices


class SliceGenerator(Protocol):
    """Maps latents and slice positions to image slices and label indices.

    z_dims: the latent sizes it takes (one per generator of the pipeline); c_dim: 1 when slices
    are conditioned on their position, else 0; image_channels M; label_channels L; resolution.
    __call__(latents [N, z_dim] per entry of z_dims, c [N, c_dim] in [0, 1], truncation_psi,
    truncation_cutoff, noise_mode) -> (images [N, M, H, W] float in [-1, 1], labels [N, H, W] long
    label indices in [0, L)).
    """

    z_dims: tuple[int, ...]
    c_dim: int
    image_channels: int
    label_channels: int
    resolution: int

    def __call__(self, latents: Sequence[torch.Tensor], c: torch.Tensor, truncation_psi: float,
                 truncation_cutoff: int | None, noise_mode: str) -> tuple[torch.Tensor, torch.Tensor]: ...


class BaselineSlices:
    """A baseline generator: one network outputs the M modalities and the L mask channels."""

    def __init__(self, generator: torch.nn.Module, image_channels: int, label_channels: int):
        if generator.variant != "baseline":
            raise ValueError(f"BaselineSlices needs a baseline generator, got variant {generator.variant!r}")
        if generator.out_channels != image_channels + label_channels:
            raise ValueError(
                f"generator outputs {generator.out_channels} channels, expected {image_channels} "
                f"modalities + {label_channels} labels")
        self.generator = generator
        self.z_dims = (generator.z_dim,)
        self.c_dim = generator.c_dim
        self.image_channels = image_channels
        self.label_channels = label_channels
        self.resolution = generator.img_resolution

    def __call__(self, latents, c, truncation_psi, truncation_cutoff, noise_mode):
        (z,) = latents
        out = self.generator(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                             noise_mode=noise_mode)
        M = self.image_channels
        assert out.shape == (z.shape[0], M + self.label_channels, self.resolution, self.resolution)
        return variant_spec("baseline").split(out, M)


class PairSlices:
    """The pair pipeline: a mask generator samples the labels, a conditional generator the images."""

    def __init__(self, mask_generator: torch.nn.Module, image_generator: torch.nn.Module):
        self.pair = PairSampler(mask_generator, image_generator)
        self.z_dims = (mask_generator.z_dim, image_generator.z_dim)
        self.c_dim = mask_generator.c_dim
        self.image_channels = image_generator.out_channels
        self.label_channels = mask_generator.out_channels
        self.resolution = mask_generator.img_resolution

    def __call__(self, latents, c, truncation_psi, truncation_cutoff, noise_mode):
        z_mask, z_image = latents
        images, labels = self.pair(z_mask, z_image, c, truncation_psi=truncation_psi,
                                   truncation_cutoff=truncation_cutoff, noise_mode=noise_mode)
        N, H = z_mask.shape[0], self.resolution
        assert images.shape == (N, self.image_channels, H, H) and labels.shape == (N, H, H)
        return images, labels


# ----------------------------------------------------------------------------------------------
# Loading the generators of a pipeline from training runs


@dataclass
class SamplingSource:
    """A ready pipeline: the slice generator, what the real data looks like, and provenance."""

    pipeline: str  # "baseline" | "pair"
    slices: SliceGenerator
    dataset: SourceDataset
    generators: list[GeneratorRecord]


def intensity_scale(entry: dict, modality: str, where: str) -> IntensityScale:
    """The [-1, 1] -> intensity mapping of one modality as recorded by the training run
    ({"modality": name, "lo": intensity at -1, "hi": intensity at +1})."""
    if entry.get("modality", modality) != modality:
        raise ValueError(f"{where}: intensity entry {entry!r} is not for modality {modality!r}")
    try:
        low, high = float(entry["lo"]), float(entry["hi"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: intensity entry {entry!r} lacks numeric 'lo' and 'hi'") from exc
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        # NaN or an empty range would write volumes of NaN or of one value
        raise ValueError(f"{where}: intensity range of {modality!r} is [{low}, {high}], not a finite range lo < hi")
    return IntensityScale(low, high)


def source_dataset(info: RunInfo, where: str) -> SourceDataset:
    """SourceDataset from a training.checkpoint.RunInfo (`where` names the checkpoint in errors).

    The typical header's origin is moved to the first slice training kept (drop_end_slices)."""
    data = info.dataset
    affine = np.asarray(data.affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"{where}: the run records no usable typical affine (affine {data.affine})")
    if not data.slices_per_patient:
        raise ValueError(f"{where}: the run records no slice counts of its training patients")
    if len(data.intensity) != len(data.modalities):
        raise ValueError(f"{where}: {len(data.intensity)} intensity entries for modalities {data.modalities}")
    drop = int(info.config.get("drop_end_slices", 0))
    affine[:3, 3] += drop * affine[:3, 2]
    return SourceDataset(list(data.modalities), [int(v) for v in data.label_values], list(data.label_names),
                         int(data.resolution),
                         [intensity_scale(e, m, where) for e, m in zip(data.intensity, data.modalities)],
                         affine, [int(n) for n in data.slices_per_patient], drop,
                         RealGrid.from_dict(data.real_grid, where) if data.real_grid else None)


def _record(role: str, run: str | Path, info: RunInfo) -> GeneratorRecord:
    return GeneratorRecord(role=role, variant=info.variant, run=str(run), checkpoint=str(info.checkpoint),
                           sha256=info.sha256, kimg=float(info.kimg), cond=info.cond,
                           dataset_fingerprint=info.dataset.fingerprint)


def _check_conditioning(generator: torch.nn.Module, info: RunInfo, where: str) -> None:
    expected = 1 if info.cond == "slice-position" else 0
    if generator.c_dim != expected:
        raise ValueError(f"{where}: trained with cond {info.cond!r} but its generator has c_dim "
                         f"{generator.c_dim}; slice conditioning needs c_dim {expected}")


def load_source(gan: str | Path | None = None, mask_gan: str | Path | None = None,
                image_gan: str | Path | None = None, device: str | torch.device = "cpu") -> SamplingSource:
    """Load the EMA generator(s) of a baseline run (gan) or of a pair (mask_gan -> image_gan).

    Refuses, with the run named: both or neither source given; a mask or conditional run as --gan;
    anything but a mask run as --mask-gan or a conditional run as --image-gan; a pair whose runs
    differ in label values/names, resolution or slice conditioning.
    """
    if gan is not None and (mask_gan is not None or image_gan is not None):
        raise ValueError("give either --gan (a baseline run) or --mask-gan with --image-gan, not both")
    if gan is not None:
        generator, info = load_generator(gan, which="G_ema", device=device)
        if info.variant != "baseline":
            hint = {"mask": "a mask run samples masks only; use it as --mask-gan with a conditional --image-gan",
                    "conditional": "a conditional run needs masks; use it as --image-gan with a --mask-gan"}
            raise ValueError(f"--gan {gan}: is a {info.variant!r} run, --gan needs a 'baseline' run "
                             f"({hint.get(info.variant, '')})")
        _check_conditioning(generator, info, f"--gan {gan}")
        slices = BaselineSlices(generator, info.image_channels, info.label_channels)
        return SamplingSource("baseline", slices, source_dataset(info, str(gan)), [_record("baseline", gan, info)])
    if mask_gan is None or image_gan is None:
        raise ValueError("the pair pipeline needs both --mask-gan and --image-gan (or give --gan for a baseline run)")
    mask_generator, mask_info = load_generator(mask_gan, which="G_ema", device=device)
    image_generator, image_info = load_generator(image_gan, which="G_ema", device=device)
    if mask_info.variant != "mask":
        raise ValueError(f"--mask-gan {mask_gan}: is a {mask_info.variant!r} run, the pair needs a 'mask' run")
    if image_info.variant != "conditional":
        raise ValueError(f"--image-gan {image_gan}: is a {image_info.variant!r} run, the pair needs a "
                         f"'conditional' run")
    differences = meaning_differences(mask_info.dataset, image_info.dataset)
    if mask_info.dataset.resolution != image_info.dataset.resolution:
        differences.append(f"resolution {image_info.dataset.resolution!r} instead of {mask_info.dataset.resolution!r}")
    if mask_info.cond != image_info.cond:
        differences.append(f"cond {image_info.cond!r} instead of {mask_info.cond!r}")
    if differences:
        raise ValueError(f"--mask-gan {mask_gan} and --image-gan {image_gan} are incompatible: the image run has "
                         f"{'; '.join(differences)} of the mask run")
    _check_conditioning(mask_generator, mask_info, f"--mask-gan {mask_gan}")
    _check_conditioning(image_generator, image_info, f"--image-gan {image_gan}")
    # Anatomy (slice counts, header) comes from the mask run, intensities from the image run.
    anatomy = source_dataset(mask_info, str(mask_gan))
    image_data = image_info.dataset
    intensity = [intensity_scale(e, m, str(image_gan)) for e, m in zip(image_data.intensity, image_data.modalities)]
    dataset = dataclasses.replace(anatomy, modalities=list(image_data.modalities), intensity=intensity)
    return SamplingSource("pair", PairSlices(mask_generator, image_generator), dataset,
                          [_record("mask", mask_gan, mask_info), _record("image", image_gan, image_info)])


def resolve_device(device: str) -> torch.device:
    """"auto" -> the first CUDA device when there is one, else the CPU; other names as given
    (ValueError for an unknown name, or CUDA on a machine without it)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"--device {device!r}: {exc}") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: CUDA is not available on this machine (use cpu or auto)")
    return chosen

"""Sampling synthetic patients from trained generators into an nnU-Net v2 raw dataset.

A synthetic patient is a stack of S axial slices. When the generator was trained with the slice
position as its label (cond "slice-position", c_dim 1), all slices of one patient share one patient
latent z and slice k gets c = k / (S - 1), so anatomy changes smoothly along the stack; otherwise
every slice gets its own latent. S is drawn from the slice counts of the real training patients.

The path of one patient through this module:

    load_source         run dir(s) -> EMA generator(s) as a SliceGenerator + what the real data
                        looked like (modalities, labels, intensity ranges, header, slice counts)
    plan_patient        candidate index -> slice count, latents [S, z_dim], positions [S, c_dim]
    PatientSampler      plans -> network calls of `batch` slices spanning patient boundaries
                        -> images [S, M, H, W] in [-1, 1], label indices [S, H, W]
    QualityGate         rejects empty / implausible masks and non-finite images (counted)
    to_volumes          -> images [M, X, Y, Z] in intensity units, labels [X, Y, Z] real values
    sample_to_directory writes them with training.synthetic_dataset (nnU-Net v2 raw layout,
                        dataset.json, synthesis.json; resume / append / overwrite / refuse) and
                        training.patient_preview (PNG montage)

Every random number of candidate j is drawn from a generator seeded by (seed, j), so a patient does
not depend on the batch size, on the device or on where an interrupted run resumed.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from gan import PairSampler
from gan.variants import variant_spec
from training.checkpoint import RunInfo, load_generator
from training.data.cache import IntensityScale
from training.data.nifti import StoredStyle
from training.data.preprocess import RealGrid
from training.data.records import meaning_differences
from training.data import load_dataset
from training.progress import LogLines
from training.patient_preview import PreviewCase, read_case, write_preview
from training.synthetic_dataset import (OutputDirError, PREVIEW_NAME, GeneratorRecord, NnUNetRawWriter, PatientRecord,
                                        SamplingSession, SamplingSettings, SynthesisLog, exclusive_output,
                                        now_utc, open_output)

CASE_PREFIX = "SYN"


# ----------------------------------------------------------------------------------------------
# What the synthetic dataset inherits from the real one


@dataclass
class SourceDataset:
    """The real training data as far as synthetic patients must imitate it.

    modalities: channel names (M); label_values: real label values, sorted, 0 first (L);
    label_names: one per label value; resolution: slice side H = W; intensity: one range per
    modality; affine: 4x4 voxel -> mm of a generated volume (slice grid i, j; slice index k);
    slices_per_patient: full stack lengths of the training patients, drawn from for each patient;
    drop_end_slices: slices training left out at each end of a stack (not generated).
    """

    modalities: list[str]
    label_values: list[int]
    label_names: list[str]
    resolution: int
    intensity: list[IntensityScale]
    affine: np.ndarray
    slices_per_patient: list[int]
    drop_end_slices: int = 0
    real_grid: RealGrid | None = None   # None: a run trained before the real grid was recorded

    def __post_init__(self) -> None:
        if len(self.intensity) != len(self.modalities):
            raise ValueError(
                f"{len(self.intensity)} intensity ranges for {len(self.modalities)} modalities "
                f"{self.modalities}")
        if len(self.label_names) != len(self.label_values) or len(self.label_values) < 2:
            raise ValueError(
                f"need >= 2 labels with one name each, got values {self.label_values} and names "
                f"{self.label_names}")
        if self.label_values[0] != 0 or sorted(self.label_values) != list(self.label_values):
            raise ValueError(f"label values must be sorted with background 0 first: {self.label_values}")
        if np.asarray(self.affine).shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got shape {np.asarray(self.affine).shape}")
        if not self.slices_per_patient or min(self.slices_per_patient) < 1:
            raise ValueError(f"slices_per_patient must be non-empty positive counts: {self.slices_per_patient}")


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
# Planning and batched generation


@dataclass
class PatientPlan:
    """Everything random about one candidate patient.

    latents: one tensor [S, z_dim] per generator (rows equal when slices share the patient latent);
    c: [S, c_dim] slice positions in [0, 1], increasing (c_dim 1), or an empty [S, 0].
    """

    candidate: int
    n_slices: int
    latents: list[torch.Tensor]
    c: torch.Tensor


def candidate_seed(seed: int, candidate: int) -> int:
    """A 63-bit seed for candidate patient `candidate` of a run with `seed`, well mixed."""
    state = np.random.SeedSequence([seed, candidate]).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1


def slice_positions(n_slices: int, first: float = 0.0, last: float = 1.0) -> torch.Tensor:
    """n_slices evenly spaced positions from first to last: [n_slices]; the middle for one slice."""
    if n_slices == 1:
        return torch.full((1,), (first + last) / 2)
    return first + (last - first) * torch.arange(n_slices, dtype=torch.float32) / (n_slices - 1)


def kept_positions(stack_slices: int, drop_end_slices: int = 0) -> torch.Tensor:
    """Positions k / (Z - 1) of the slices k = d .. Z - 1 - d that training kept of a stack of
    Z = stack_slices slices with d = drop_end_slices dropped at each end (the middle slice when
    nothing would be left): [Z - 2d] in [0, 1], as the slice cache defines c."""
    if stack_slices == 1:
        return torch.zeros(1)
    if stack_slices - 2 * drop_end_slices < 1:
        return torch.full((1,), 0.5)
    return torch.arange(drop_end_slices, stack_slices - drop_end_slices, dtype=torch.float32) / (stack_slices - 1)


def plan_patient(candidate: int, seed: int, z_dims: Sequence[int], c_dim: int,
                 slices_per_patient: Sequence[int], fixed_slices: int | None = None,
                 drop_end_slices: int = 0) -> PatientPlan:
    """Draw the slice count and the latents of candidate patient `candidate` (CPU tensors).

    The stack length Z is drawn from slices_per_patient (the real patients' full stacks) and the
    patient gets the Z - 2 * drop_end_slices slices that training kept, at their positions. With
    fixed_slices, that many slices span the kept position range of a median-length stack.
    With c_dim == 1 one latent per generator is shared by all slices and c = slice position;
    with c_dim == 0 every slice gets its own latents.
    """
    if c_dim not in (0, 1):
        raise ValueError(f"slice conditioning needs c_dim 0 or 1, the generator has c_dim {c_dim}")
    rng = torch.Generator().manual_seed(candidate_seed(seed, candidate))
    stack = int(slices_per_patient[int(torch.randint(len(slices_per_patient), (1,), generator=rng))])
    if fixed_slices is None:
        positions = kept_positions(stack, drop_end_slices)
    else:
        typical = kept_positions(int(np.median(slices_per_patient)), drop_end_slices)
        positions = slice_positions(fixed_slices, float(typical[0]), float(typical[-1]))
    n_slices = len(positions)
    rows = 1 if c_dim == 1 else n_slices
    latents = [torch.randn(rows, z_dim, generator=rng).expand(n_slices, z_dim).contiguous() for z_dim in z_dims]
    c = positions[:, None] if c_dim == 1 else torch.zeros(n_slices, 0)
    return PatientPlan(candidate, n_slices, latents, c)


@dataclass
class GeneratedPatient:
    """A candidate patient as it left the networks: images [S, M, H, W] in [-1, 1], labels [S, H, W]
    label indices (int64), both on the CPU in slice order."""

    plan: PatientPlan
    images: torch.Tensor
    labels: torch.Tensor


@dataclass
class _OpenPatient:
    """A patient whose slices are being generated: the parts done so far, in slice order."""

    plan: PatientPlan
    image_parts: list[torch.Tensor] = field(default_factory=list)
    label_parts: list[torch.Tensor] = field(default_factory=list)
    rows_done: int = 0


class PatientSampler:
    """Generates synthetic patients in memory, batching slices through the networks.

    slices: the pipeline's SliceGenerator; slices_per_patient: stack lengths of the real patients
    to draw from; fixed_slices: generate this many slices instead; drop_end_slices: stack ends
    training left out (see plan_patient); seed: candidate j uses the seed (seed, j);
    truncation_psi / truncation_cutoff: StyleGAN truncation of w towards w_avg in the first
    `cutoff` layers (all when None); batch: slices per network call; device: where the networks
    are; noise_mode: "const" | "random" | "none".
    """

    def __init__(self, slices: SliceGenerator, slices_per_patient: Sequence[int], seed: int = 0,
                 truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                 fixed_slices: int | None = None, batch: int = 16, device: str | torch.device = "cpu",
                 noise_mode: str = "const", drop_end_slices: int = 0):
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if not slices_per_patient or min(slices_per_patient) < 1:
            raise ValueError(f"need positive slice counts of real patients, got {list(slices_per_patient)}")
        self.slices = slices
        self.slices_per_patient = list(slices_per_patient)
        self.seed = seed
        self.truncation_psi = truncation_psi
        self.truncation_cutoff = truncation_cutoff
        self.fixed_slices = fixed_slices
        self.batch = batch
        self.device = torch.device(device)
        self.noise_mode = noise_mode
        self.drop_end_slices = drop_end_slices

    def plan(self, candidate: int) -> PatientPlan:
        """The slice count and latents of candidate patient `candidate`."""
        return plan_patient(candidate, self.seed, self.slices.z_dims, self.slices.c_dim,
                            self.slices_per_patient, self.fixed_slices, self.drop_end_slices)

    def candidates(self, first: int = 0, count: int | None = None) -> Iterator[GeneratedPatient]:
        """Candidate patients first, first + 1, ... (endless when count is None), in order.

        A batch is filled with consecutive slices across patient boundaries, so the Python work
        per batch is per patient segment, never per slice. Plans are made lazily: a consumer that
        stops early (enough accepted patients) wastes at most one batch.
        """
        indices = itertools.count(first) if count is None else range(first, first + count)
        plans = (self.plan(j) for j in indices)
        open_patients: list[_OpenPatient] = []  # the last one may be only partly scheduled
        scheduled = 0  # slices of open_patients[-1] already put into a batch
        while True:
            segments = self._fill_batch(plans, open_patients, scheduled)
            if not segments:
                return
            scheduled = segments[-1][2]
            images, labels = self._run_batch(segments)
            row = 0
            for patient, lo, hi in segments:
                patient.image_parts.append(images[row:row + hi - lo])
                patient.label_parts.append(labels[row:row + hi - lo])
                patient.rows_done += hi - lo
                row += hi - lo
            # Patients complete in candidate order; the partly generated last one stays open.
            while open_patients and open_patients[0].rows_done == open_patients[0].plan.n_slices:
                done = open_patients.pop(0)
                yield GeneratedPatient(done.plan, torch.cat(done.image_parts), torch.cat(done.label_parts))

    def _fill_batch(self, plans: Iterator[PatientPlan], open_patients: list[_OpenPatient],
                    scheduled: int) -> list[tuple[_OpenPatient, int, int]]:
        """Segments (patient, first slice, end slice) of up to `batch` consecutive slices: the rest
        of the partly scheduled last open patient, then new plans; [] when all are done."""
        segments = []
        filled = 0
        if open_patients and scheduled < open_patients[-1].plan.n_slices:
            take = min(self.batch, open_patients[-1].plan.n_slices - scheduled)
            segments.append((open_patients[-1], scheduled, scheduled + take))
            filled = take
        while filled < self.batch:
            plan = next(plans, None)
            if plan is None:
                break
            patient = _OpenPatient(plan)
            open_patients.append(patient)
            take = min(self.batch - filled, plan.n_slices)
            segments.append((patient, 0, take))
            filled += take
        return segments

    def _run_batch(self, segments: list[tuple[_OpenPatient, int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """One network call over the concatenated segments -> CPU (images [B, M, H, W] float32,
        labels [B, H, W] int64)."""
        latents = [torch.cat([p.plan.latents[i][lo:hi] for p, lo, hi in segments]).to(self.device)
                   for i in range(len(self.slices.z_dims))]
        c = torch.cat([p.plan.c[lo:hi] for p, lo, hi in segments]).to(self.device)
        with torch.inference_mode():
            images, labels = self.slices(latents, c, self.truncation_psi, self.truncation_cutoff,
                                         self.noise_mode)
        B, H = c.shape[0], self.slices.resolution
        assert images.shape == (B, self.slices.image_channels, H, H) and labels.shape == (B, H, H)
        return images.float().cpu(), labels.long().cpu()


# ----------------------------------------------------------------------------------------------
# Conversion to volumes


# Real slices are exactly -1 in every modality outside the body (the preprocessing clips all that
# lies below the window to -1); on the phantom slices no labelled voxel is below -0.9 in every
# modality, while the generators only approach -1 there (-0.99 .. -0.95).
BACKGROUND_LEVEL = -0.9


def background_intensity(scale: IntensityScale) -> float:
    """What the writer puts outside the body: 0 (the MR convention) or, for windows reaching below
    0 (CT), the window's low end."""
    return min(0.0, scale.lo)


def to_volumes(images: torch.Tensor, labels: torch.Tensor, source: SourceDataset
               ) -> tuple[np.ndarray, np.ndarray]:
    """Stack slices into volumes in the real dataset's units.

    images [S, M, H, W] ~[-1, 1] -> float32 [M, H, W, S] in each modality's intensity range,
    clamped to [-1, 1] first: the range the training slices were clipped to, so values beyond it
    are the generator's overshoot, not intensities it learned.  Background-labelled voxels below
    `BACKGROUND_LEVEL` in every modality are outside the body: they get `background_intensity`,
    as in the real volumes.  Without this, readers that normalise over "voxels above the volume
    minimum" or "non-zero voxels" (ours, nnU-Net) count the generator's near -1 background as
    tissue and shift every synthetic intensity (by +0.2 on the phantoms' white matter).
    labels [S, H, W] indices in [0, L) -> [H, W, S] real label values (uint8, or int16 above 255).
    Slice k becomes the axial plane [..., k], the last (canonical RAS superior) axis.
    """
    S, M, H, W = images.shape
    assert labels.shape == (S, H, W) and M == len(source.modalities)
    stacked = images.clamp(-1.0, 1.0).permute(1, 2, 3, 0).numpy()  # [M, H, W, S]
    outside = (stacked.max(axis=0) <= BACKGROUND_LEVEL) & (labels.permute(1, 2, 0).numpy() == 0)  # [H, W, S]
    volume = np.stack([np.where(outside, background_intensity(source.intensity[m]),
                                source.intensity[m].to_intensity(stacked[m])) for m in range(M)])
    dtype = np.uint8 if max(source.label_values) <= 255 else np.int16
    lookup = np.asarray(source.label_values, dtype=dtype)
    label_volume = lookup[labels.permute(1, 2, 0).numpy()]  # [H, W, S]
    return volume, label_volume


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


# ----------------------------------------------------------------------------------------------
# The whole stage: sample, gate, write, record, preview

MAX_REJECTIONS_PER_PATIENT = 10
PREVIEW_PATIENTS = 4


class QualityGateError(RuntimeError):
    """The quality gate rejected too many candidates; the patients written so far are kept."""


@dataclass
class SamplingReport:
    """What a call of `sample_to_directory` did: action new/resume/append/complete, patients
    written now, patients in the directory, this session's rejections by reason, preview path."""

    out_dir: Path
    action: str
    written: int
    total: int
    rejected: dict[str, int]
    preview: Path | None = None


def sample_to_directory(source: SamplingSource, settings: SamplingSettings, out_dir: str | Path, *,
                        batch: int = 16, device: str | torch.device = "cpu", append: bool = False,
                        overwrite: bool = False, preview: bool = False, preview_real: str | Path | None = None,
                        progress: bool = True) -> SamplingReport:
    """Write settings.patients synthetic patients from `source` into out_dir (nnU-Net v2 raw).

    Each accepted patient is written atomically and then recorded in synthesis.json and
    dataset.json (both replaced atomically), so an interrupted call resumes at the next missing
    patient when run again with the same settings. See `open_output` for existing directories;
    one process at a time writes into a directory (flock on the directory).
    preview writes out_dir/preview.png of the first patients of this session; preview_real (a real
    dataset folder) adds its first patients below them.
    Raises OutputDirError for a refused directory and QualityGateError when the quality gate rejects
    more than MAX_REJECTIONS_PER_PATIENT candidates per requested patient.
    """
    out_dir = Path(out_dir)
    data = source.dataset
    with exclusive_output(out_dir):
        empty = SynthesisLog(list(data.modalities), list(data.label_values), list(data.label_names),
                             data.resolution)
        log, action = open_output(out_dir, settings, empty, append=append, overwrite=overwrite)
        session = log.sessions[-1]
        on_real_grid = settings.grid == "real" and data.real_grid is not None
        if settings.grid == "real" and not on_real_grid and action != "complete":
            print(f"note: {', '.join(g.run for g in source.generators)}: trained before stylepair recorded the real "
                  f"grid; patients are written on the generator's {data.resolution}-px frame (RAS, float32)",
                  file=sys.stderr)
        writer = NnUNetRawWriter(out_dir, data.modalities, data.label_values, data.label_names,
                                 style=data.real_grid.style if on_real_grid else StoredStyle(),
                                 descrip=_descrip(source))
        written = 0
        if action != "complete":
            _discard_unrecorded(writer, log)
            _save_state(log, writer, session)
            sampler = PatientSampler(source.slices, data.slices_per_patient, settings.seed,
                                     settings.truncation_psi, settings.truncation_cutoff, settings.slices, batch,
                                     device, settings.noise_mode, data.drop_end_slices)
            written = _run_session(sampler, data, log, writer, progress)
        preview_path = None
        if preview or preview_real is not None:
            shown = (session.patients or log.patients)[:PREVIEW_PATIENTS]
            preview_path = _write_preview(out_dir, source, [p.case_id for p in shown], preview_real)
    return SamplingReport(out_dir, action, written, len(log.patients), dict(session.rejected), preview_path)


def _descrip(source: SamplingSource) -> str:
    """The NIfTI descrip of a sampled file: stylepair, the pipeline and its generators' checksums."""
    return f"stylepair synthetic {source.pipeline} " + " ".join(f"{g.role}:{g.sha256[:12]}" for g in source.generators)


def _write_preview(out_dir: Path, source: SamplingSource, case_ids: list[str], real_root: Path | None) -> Path:
    """out_dir/preview.png of the given synthetic cases, above the first PREVIEW_PATIENTS patients
    of the real dataset at real_root (read with the project's reader) when one is given."""
    data = source.dataset
    groups = [(source.pipeline, [read_case(out_dir, case_id, len(data.modalities)) for case_id in case_ids])]
    if real_root is not None:
        real = load_dataset(real_root, modalities=list(data.modalities), check_voxels=False)
        differences = meaning_differences(data, real)
        if differences:
            raise ValueError(f"{real_root}: has {'; '.join(differences)} of the generator's patients")
        groups.append(("real", [PreviewCase(p.case_id, p.load_images(), p.load_label(), p.spacing)
                                for p in real.patients[:PREVIEW_PATIENTS]]))
    return write_preview(out_dir / PREVIEW_NAME, groups, data.modalities, data.label_values, data.label_names)


def _discard_unrecorded(writer: NnUNetRawWriter, log: SynthesisLog) -> None:
    """Remove temporary files and the files of cases that an interruption left unrecorded -- only
    those the writer recorded as its own; any other file there stops the run (OutputDirError)."""
    writer.remove_partial_files()
    unrecorded = writer.existing_case_ids() - {p.case_id for p in log.patients}
    foreign = writer.foreign_files(unrecorded)
    if foreign:
        raise OutputDirError(f"{writer.root}: {len(foreign)} file(s) in imagesTr/ or labelsTr/ were not written by "
                             f"sample_patients.py ({', '.join(p.name for p in foreign[:5])}"
                             f"{', …' if len(foreign) > 5 else ''}); nothing was deleted: move them out of the folder "
                             f"or choose another --out")
    for case_id in unrecorded:
        writer.remove_case(case_id)


def _save_state(log: SynthesisLog, writer: NnUNetRawWriter, session: SamplingSession) -> None:
    """Record progress: synthesis.json, then dataset.json with the recorded patient count."""
    session.updated = now_utc()
    log.save(writer.root / "synthesis.json")
    pipelines = sorted({s.settings.pipeline for s in log.sessions})
    writer.write_dataset_json(len(log.patients), f"synthetic patients sampled by stylepair "
                                                 f"({', '.join(pipelines)}); provenance in synthesis.json")


def _run_session(sampler: PatientSampler, data: SourceDataset, log: SynthesisLog, writer: NnUNetRawWriter,
                 progress: bool) -> int:
    """Generate, gate and write patients until the last session of log has its count; returns the
    number written now."""
    session = log.sessions[-1]
    settings = session.settings
    gate = settings.quality_gate
    written = 0
    bar = tqdm(total=settings.patients, initial=len(session.patients), unit="patient", desc="sampling",
               disable=None if progress else True)
    lines = LogLines("sampling", settings.patients, "patient", len(session.patients), progress)
    with bar:
        candidates = sampler.candidates(first=session.next_candidate)
        while len(session.patients) < settings.patients:
            patient = next(candidates)
            session.next_candidate = patient.plan.candidate + 1
            reason = gate.rejection(patient.images, patient.labels)
            if reason is not None:
                _count_rejection(session, reason, log, writer)
                bar.set_postfix(rejected=session.rejected_total)
                continue
            case_id = f"{CASE_PREFIX}_{len(log.patients):04d}"
            images, labels = to_volumes(patient.images, patient.labels, data)
            affine = data.affine
            if settings.grid == "real" and data.real_grid is not None:
                images, labels, affine = data.real_grid.restore(images, labels, data.drop_end_slices)
            writer.write_case(case_id, images, labels, affine)
            session.patients.append(PatientRecord(
                case_id, patient.plan.candidate, candidate_seed(settings.seed, patient.plan.candidate),
                patient.plan.n_slices, float((patient.labels != 0).float().mean())))
            _save_state(log, writer, session)
            written += 1
            bar.update(1)
            lines.step(f", {case_id}" + (f" ({session.rejected_total} rejected so far)" if session.rejected_total else ""))
        candidates.close()
    session.complete = True
    _save_state(log, writer, session)
    return written


def _count_rejection(session: SamplingSession, reason: str, log: SynthesisLog, writer: NnUNetRawWriter) -> None:
    """Count one rejected candidate; give up (QualityGateError, progress saved) when the gate rejects
    more than MAX_REJECTIONS_PER_PATIENT candidates per requested patient."""
    session.rejected[reason] = session.rejected.get(reason, 0) + 1
    if session.rejected_total > MAX_REJECTIONS_PER_PATIENT * session.settings.patients:
        _save_state(log, writer, session)
        reasons = ", ".join(f"{why}: {n}" for why, n in sorted(session.rejected.items()))
        raise QualityGateError(
            f"the quality gate rejected {session.rejected_total} candidates ({reasons}) while accepting "
            f"{len(session.patients)} of {session.settings.patients}; loosen --min-label-fraction / "
            f"--max-label-fraction or pass --keep-empty")

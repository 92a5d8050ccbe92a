"""Patient planning and batched generation: every random number of candidate j from (seed, j)."""
from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from training.sampling.generators import SliceGenerator


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

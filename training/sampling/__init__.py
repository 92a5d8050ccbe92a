"""Stage 3, sampling: synthetic patients from trained generators (or procedural synthesisers) into an
nnU-Net v2 raw dataset.

A synthetic patient is a stack of S axial slices. When the generator was trained with the slice
position as its label (cond "slice-position", c_dim 1), all slices of one patient share one patient
latent z and slice k gets c = k / (S - 1), so anatomy changes smoothly along the stack; otherwise
every slice gets its own latent. S is drawn from the slice counts of the real training patients.

The path of one patient through this package (module in brackets):

    load_source         [generators] run dir(s) -> EMA generator(s) as a SliceGenerator + what the real data
                        looked like (modalities, labels, intensity ranges, header, slice counts)
    plan_patient        [planning] candidate index -> slice count, latents [S, z_dim], positions [S, c_dim]
    PatientSampler      plans -> network calls of `batch` slices spanning patient boundaries
                        -> images [S, M, H, W] in [-1, 1], label indices [S, H, W]
    QualityGate         [synthetic_dataset] rejects empty / implausible masks and non-finite images (counted)
    to_volumes          [volumes] -> images [M, X, Y, Z] in intensity units, labels [X, Y, Z] real values
    sample_to_directory [stage] writes them with training.sampling.nnunet_writer (nnU-Net v2 raw layout,
                        dataset.json) and training.sampling.synthetic_dataset (synthesis.json; resume /
                        append / overwrite / refuse), and training.sampling.patient_preview (PNG montage)

Every random number of candidate j is drawn from a generator seeded by (seed, j), so a patient does
not depend on the batch size, on the device or on where an interrupted run resumed.
``procedural_sampling`` makes patients from real ones by rules into the same layout; ``cli_sample`` is
``sample_patients.py``.
"""
from training.sampling.generators import (BaselineSlices, PairSlices, SamplingSource, SliceGenerator, load_source,
                                          resolve_device)
from training.sampling.planning import PatientSampler, candidate_seed, plan_patient, slice_positions
from training.sampling.stage import MAX_REJECTIONS_PER_PATIENT, QualityGateError, SamplingReport, sample_to_directory
from training.sampling.volumes import SourceDataset, to_volumes

__all__ = ["BaselineSlices", "MAX_REJECTIONS_PER_PATIENT", "PairSlices", "PatientSampler", "QualityGateError",
           "SamplingReport", "SamplingSource", "SliceGenerator", "SourceDataset", "candidate_seed", "load_source",
           "plan_patient", "resolve_device", "sample_to_directory", "slice_positions", "to_volumes"]

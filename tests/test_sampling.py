"""Sampling synthetic patients: nnU-Net v2 output read back by the project's reader, determinism,
slice conditioning and batching, resume / append / overwrite / refusal, the quality gate, the CLI.

Generators are untrained tiny StyleGAN2s (16x16): the mechanics, not the image quality, are tested.
"""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import matplotlib.image
import nibabel as nib
import numpy as np
import pytest
import torch

from gan import build_generator, channels_to_labels
from training.checkpoint import DatasetInfo, SnapshotContent, write_snapshot
from training.config import TrainConfig
from training.data import load_dataset
from training.data.cache import IntensityScale
from training.data.phantoms import write_phantom_dataset
from training.data.typed_config import to_mapping
from training.sampling.cli_sample import main as cli_main
from training.sampling.patient_preview import PreviewCase, write_preview
from training.sampling import (BaselineSlices, PairSlices, PatientSampler, QualityGateError, SamplingSource,
                               SourceDataset, load_source, plan_patient, sample_to_directory, slice_positions,
                               to_volumes)
from training.sampling.nnunet_writer import NnUNetRawWriter
from training.sampling.synthetic_dataset import (GeneratorRecord, OutputDirError, QualityGate,
                                        SamplingSettings, SynthesisLog, exclusive_output)

from tiny import tiny_network

RES = 16
MODALITIES = ["T1", "T1ce", "T2", "FLAIR"]
LABEL_VALUES = [0, 1, 2, 3, 4, 5]
LABEL_NAMES = ["background", "csf", "grey_matter", "white_matter", "oedema", "core"]
SLICE_COUNTS = [5, 6, 7]


def tiny_generator(variant: str, c_dim: int, seed: int = 0, resolution: int = RES) -> torch.nn.Module:
    torch.manual_seed(seed)
    G = build_generator(variant, tiny_network(c_dim, resolution), image_channels=len(MODALITIES),
                        label_channels=len(LABEL_VALUES))
    return G.eval().requires_grad_(False)


def source_dataset(modalities=MODALITIES, label_values=LABEL_VALUES, label_names=LABEL_NAMES) -> SourceDataset:
    affine = np.diag([2.0, 2.5, 3.0, 1.0])
    affine[:3, 3] = [-15.0, -18.0, -9.0]
    return SourceDataset(list(modalities), list(label_values), list(label_names), RES,
                         [IntensityScale(0.0, 1000.0 + 100 * m) for m in range(len(modalities))], affine,
                         list(SLICE_COUNTS))


def record(role: str, variant: str, sha: str) -> GeneratorRecord:
    return GeneratorRecord(role, variant, f"runs/{role}", f"runs/{role}/G_ema.safetensors", sha, 1.0, "slice-position")


@pytest.fixture(scope="module")
def baseline_source() -> SamplingSource:
    slices = BaselineSlices(tiny_generator("baseline", c_dim=1), len(MODALITIES), len(LABEL_VALUES))
    return SamplingSource("baseline", slices, source_dataset(), [record("baseline", "baseline", "a" * 64)])


def settings(source: SamplingSource, patients: int = 3, **changes) -> SamplingSettings:
    values = dict(pipeline=source.pipeline, generators=source.generators, patients=patients,
                  quality_gate=QualityGate(keep_empty=True))
    values.update(changes)
    return SamplingSettings(**values)


def read_arrays(root: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(root.glob("*Tr/*.nii.gz"))}


# ----------------------------------------------------------------------------------------------
# Round trip through the project's nnU-Net reader


def test_round_trip_matches_source_dataset(tmp_path):
    real = load_dataset(write_phantom_dataset(tmp_path / "real", n_patients=2, shape=(16, 16, 8), layout="nnunet"))
    data = source_dataset(real.modalities, real.label_values, real.label_names)
    slices = BaselineSlices(tiny_generator("baseline", c_dim=1), len(real.modalities), len(real.label_values))
    source = SamplingSource("baseline", slices, data, [record("baseline", "baseline", "b" * 64)])
    report = sample_to_directory(source, settings(source, patients=3), tmp_path / "syn", batch=4, progress=False)
    assert (report.action, report.written, report.total) == ("new", 3, 3)

    synthetic = load_dataset(tmp_path / "syn", layout="nnunet")
    assert synthetic.modalities == real.modalities
    assert synthetic.label_names == real.label_names
    assert set(synthetic.label_values) <= set(real.label_values)
    assert synthetic.case_ids == ["SYN_0000", "SYN_0001", "SYN_0002"]
    meta = json.loads((tmp_path / "syn" / "dataset.json").read_text())
    assert meta["channel_names"] == {str(i): m for i, m in enumerate(real.modalities)}
    assert meta["labels"] == dict(zip(real.label_names, real.label_values))
    assert (meta["numTraining"], meta["file_ending"]) == (3, ".nii.gz")
    log = SynthesisLog.load(tmp_path / "syn" / "synthesis.json")
    generated = PatientSampler(slices, SLICE_COUNTS, seed=0, batch=4).candidates(count=3)
    for patient, recorded, fresh in zip(synthetic.patients, log.patients, generated):
        assert patient.shape == (RES, RES, recorded.n_slices) and recorded.n_slices in SLICE_COUNTS
        np.testing.assert_allclose(patient.affine, data.affine, atol=1e-5)
        images, labels = patient.load_images(), patient.load_label()
        assert images.shape == (len(real.modalities), RES, RES, recorded.n_slices)
        assert set(np.unique(labels)) <= set(real.label_values)
        # What the networks made, in the real units: [-1, 1] -> [lo, hi], indices -> label values.
        expected_images, expected_labels = to_volumes(fresh.images, fresh.labels, data)
        np.testing.assert_allclose(images, expected_images, rtol=1e-5, atol=1e-2)
        np.testing.assert_array_equal(labels, expected_labels)
        assert {int(v) for v in np.unique(labels)} - {0} and labels.dtype.kind == "i"


def test_to_volumes_maps_indices_to_label_values_and_unit_range_to_intensity():
    data = source_dataset(label_values=[0, 2, 7, 300, 301, 302])
    images = torch.tensor([-1.0, 0.0, 1.5]).view(3, 1, 1, 1).expand(3, len(MODALITIES), RES, RES)  # 1.5: overshoot
    labels = torch.arange(3).view(3, 1, 1).expand(3, RES, RES) * 2  # indices 0, 2, 4
    volume, label_volume = to_volumes(images, labels, data)
    assert volume.shape == (len(MODALITIES), RES, RES, 3) and label_volume.shape == (RES, RES, 3)
    assert label_volume.dtype == np.int16
    assert [int(label_volume[0, 0, k]) for k in range(3)] == [0, 7, 301]
    hi = data.intensity[1].hi
    np.testing.assert_allclose(volume[1, 0, 0], [0.0, hi / 2, hi])


def test_background_is_written_as_real_background_and_intensities_survive_renormalisation(tmp_path):
    from training.data.preprocess import IntensityNorm, intensity_window, normalise

    # A real phantom patient in [-1, 1] (what the generators imitate), its outside-the-body voxels
    # (exactly -1 everywhere) replaced by what generators make there: values just above -1.
    patient = load_dataset(write_phantom_dataset(tmp_path / "p", n_patients=1, shape=(32, 32, 6), seed=3)).patients[0]
    volume, label = patient.load_images(), patient.load_label()               # [M, X, Y, Z], [X, Y, Z]
    norm = IntensityNorm(method="percentile", lower=0.5, upper=99.5, foreground_only=True)
    windows = [intensity_window(v, norm) for v in volume]
    unit = np.stack([normalise(v, w) for v, w in zip(volume, windows)])
    outside = (unit.max(axis=0) == -1.0) & (label == 0)
    generated = np.where(outside, np.random.default_rng(0).uniform(-0.99, -0.95, size=unit.shape), unit)
    data = dataclasses.replace(source_dataset(), resolution=32, intensity=[IntensityScale(*w) for w in windows])
    written, _ = to_volumes(torch.tensor(generated.transpose(3, 0, 1, 2), dtype=torch.float32),
                            torch.tensor(label.transpose(2, 0, 1).astype(np.int64)), data)
    assert written.dtype == np.float32
    assert np.all(written[:, outside] == 0.0)                                  # as in the real MR volume
    # and so are the few unlabelled voxels at the head's edge that are that dark in every modality
    snapped = np.all(written == 0.0, axis=0)
    assert (snapped & ~outside).sum() < 0.01 * outside.sum()
    inside = ~snapped
    back = np.stack([scale.to_unit(v) for scale, v in zip(data.intensity, written)])
    np.testing.assert_allclose(back[:, inside], unit[:, inside], atol=1e-5)   # the body: the linear map
    # The study (and nnU-Net) re-normalise each patient over its voxels above the minimum: the
    # generated values come back (mean error 0.014; 0.064 when the background was written as the
    # window's low end, which those readers count as tissue).
    again = np.stack([normalise(v, intensity_window(v, norm)) for v in written])
    assert np.abs(again[:, inside] - unit[:, inside]).mean() < 0.025


def test_writer_refuses_mismatched_arrays(tmp_path):
    writer = NnUNetRawWriter(tmp_path, MODALITIES, LABEL_VALUES, LABEL_NAMES)
    with pytest.raises(ValueError, match="SYN_0000"):
        writer.write_case("SYN_0000", np.zeros((3, 4, 4, 2), np.float32), np.zeros((4, 4, 2), np.uint8), np.eye(4))


# ----------------------------------------------------------------------------------------------
# Determinism, slice conditioning, batching


def test_same_seed_identical_files_different_seed_different(tmp_path, baseline_source):
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        sample_to_directory(baseline_source, settings(baseline_source, patients=2, seed=seed), tmp_path / name,
                            batch=8, progress=False)
    a, b, c = (read_arrays(tmp_path / name) for name in "abc")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a/imagesTr/SYN_0000_0000.nii.gz").read_bytes() == \
        (tmp_path / "b/imagesTr/SYN_0000_0000.nii.gz").read_bytes()
    for case in ("SYN_0000", "SYN_0001"):  # first slices differ with another seed
        assert not np.array_equal(a[f"{case}_0000.nii.gz"][..., 0], c[f"{case}_0000.nii.gz"][..., 0])


class RecordingSlices:
    """Wraps a SliceGenerator and records every call's latents and c."""

    def __init__(self, inner):
        self.inner = inner
        self.z_dims, self.c_dim = inner.z_dims, inner.c_dim
        self.image_channels, self.label_channels = inner.image_channels, inner.label_channels
        self.resolution = inner.resolution
        self.calls: list[tuple[list[torch.Tensor], torch.Tensor]] = []

    def __call__(self, latents, c, truncation_psi, truncation_cutoff, noise_mode):
        self.calls.append(([z.clone() for z in latents], c.clone()))
        return self.inner(latents, c, truncation_psi, truncation_cutoff, noise_mode)


def test_conditioned_patient_shares_latent_and_gets_slice_positions_in_order(baseline_source):
    recorder = RecordingSlices(baseline_source.slices)
    sampler = PatientSampler(recorder, SLICE_COUNTS, seed=3, batch=4)
    patients = list(sampler.candidates(first=0, count=3))
    counts = [p.plan.n_slices for p in patients]
    assert all(call[1].shape[0] <= 4 for call in recorder.calls)
    assert sum(call[1].shape[0] for call in recorder.calls) == sum(counts)  # every slice once, batched
    c_seen = torch.cat([call[1] for call in recorder.calls])[:, 0]
    z_seen = torch.cat([call[0][0] for call in recorder.calls])
    torch.testing.assert_close(c_seen, torch.cat([slice_positions(n) for n in counts]))
    for patient, start in zip(patients, np.cumsum([0] + counts[:-1])):
        rows = z_seen[start:start + patient.plan.n_slices]
        assert torch.equal(rows, rows[:1].expand_as(rows))  # one patient latent for all slices
        assert c_seen[start] == 0 and c_seen[start + patient.plan.n_slices - 1] == 1
    assert not torch.equal(z_seen[0], z_seen[counts[0]])  # the next patient has its own latent


def test_unconditioned_slices_are_independent():
    plan = plan_patient(0, seed=1, z_dims=(16,), c_dim=0, slices_per_patient=[6])
    assert plan.c.shape == (6, 0) and plan.n_slices == 6
    assert len({tuple(row.tolist()) for row in plan.latents[0]}) == 6
    slices = BaselineSlices(tiny_generator("baseline", c_dim=0), len(MODALITIES), len(LABEL_VALUES))
    (patient,) = PatientSampler(slices, [3], seed=1, batch=2).candidates(count=1)
    assert patient.images.shape == (3, len(MODALITIES), RES, RES)
    assert not torch.allclose(patient.images[0], patient.images[1])


def test_slice_positions_follow_the_slices_training_kept():
    plan = plan_patient(0, seed=0, z_dims=(8,), c_dim=1, slices_per_patient=[10], drop_end_slices=2)
    assert plan.n_slices == 6
    torch.testing.assert_close(plan.c[:, 0], torch.arange(2, 8, dtype=torch.float32) / 9)
    fixed = plan_patient(0, seed=0, z_dims=(8,), c_dim=1, slices_per_patient=[10], fixed_slices=3, drop_end_slices=2)
    torch.testing.assert_close(fixed.c[:, 0], torch.tensor([2 / 9, 0.5, 7 / 9]))
    full = plan_patient(0, seed=0, z_dims=(8,), c_dim=1, slices_per_patient=[10])
    torch.testing.assert_close(full.c[:, 0], slice_positions(10))


def test_batching_does_not_change_patients(baseline_source):
    one = list(PatientSampler(baseline_source.slices, [4], seed=5, batch=1).candidates(count=2))
    many = list(PatientSampler(baseline_source.slices, [4], seed=5, batch=3).candidates(count=2))
    for a, b in zip(one, many):
        torch.testing.assert_close(a.images, b.images, atol=1e-4, rtol=1e-4)
        assert (a.labels == b.labels).float().mean() > 0.99  # argmax may flip only on near-ties
        assert a.images.shape[0] == a.plan.n_slices and a.labels.shape == (a.plan.n_slices, RES, RES)


def test_pair_pipeline_labels_come_from_mask_generator():
    mask_G, image_G = tiny_generator("mask", 1, seed=1), tiny_generator("conditional", 1, seed=2)
    pair = PairSlices(mask_G, image_G)
    sampler = PatientSampler(pair, [4], seed=0, batch=3)
    (patient,) = list(sampler.candidates(count=1))
    z_mask = patient.plan.latents[0].clone()
    with torch.inference_mode():
        expected = channels_to_labels(mask_G(z_mask, patient.plan.c, noise_mode="const"))
    assert torch.equal(patient.labels, expected)
    assert patient.images.shape == (4, len(MODALITIES), RES, RES)


# ----------------------------------------------------------------------------------------------
# Existing directories: refuse, resume, append, overwrite


def test_refuses_existing_directories(tmp_path, baseline_source):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="no synthesis.json"):
        sample_to_directory(baseline_source, settings(baseline_source), foreign, progress=False)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    real = write_phantom_dataset(tmp_path / "real", n_patients=1, shape=(8, 8, 8), layout="nnunet")
    with pytest.raises(OutputDirError, match="refusing to delete"):
        sample_to_directory(baseline_source, settings(baseline_source), real, overwrite=True, progress=False)
    assert (real / "labelsTr" / "phantom_000.nii.gz").is_file()
    report = sample_to_directory(baseline_source, settings(baseline_source, patients=1), foreign, overwrite=True,
                                 progress=False)
    assert report.written == 1 and (foreign / "notes.txt").read_text() == "mine"

    out = tmp_path / "syn"
    sample_to_directory(baseline_source, settings(baseline_source, patients=2), out, progress=False)
    with pytest.raises(OutputDirError, match="--append"):
        sample_to_directory(baseline_source, settings(baseline_source, patients=2, seed=1), out, progress=False)
    again = sample_to_directory(baseline_source, settings(baseline_source, patients=2), out, progress=False)
    assert (again.action, again.written) == ("complete", 0)
    with pytest.raises(OutputDirError, match="exclude"):
        sample_to_directory(baseline_source, settings(baseline_source), out, append=True, overwrite=True)


def test_one_writer_per_directory(tmp_path, baseline_source):
    out = tmp_path / "syn"
    with exclusive_output(out):  # flock is per open file: this holds it like another process would
        with pytest.raises(OutputDirError, match="another sampling process"):
            sample_to_directory(baseline_source, settings(baseline_source), out, progress=False)
    report = sample_to_directory(baseline_source, settings(baseline_source, patients=1), out, progress=False)
    assert report.written == 1


def test_append_adds_new_patients_and_overwrite_replaces(tmp_path, baseline_source):
    out = tmp_path / "syn"
    sample_to_directory(baseline_source, settings(baseline_source, patients=2), out, progress=False)
    first = read_arrays(out)
    report = sample_to_directory(baseline_source, settings(baseline_source, patients=2), out, append=True,
                                 progress=False)
    assert (report.action, report.written, report.total) == ("append", 2, 4)
    after = read_arrays(out)
    assert all(np.array_equal(after[k], v) for k, v in first.items())  # old patients untouched
    assert not np.array_equal(after["SYN_0002_0000.nii.gz"][..., :1], first["SYN_0000_0000.nii.gz"][..., :1])
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 4
    log = SynthesisLog.load(out / "synthesis.json")
    assert [s.first_candidate for s in log.sessions] == [0, 2]

    report = sample_to_directory(baseline_source, settings(baseline_source, patients=1, seed=9), out,
                                 overwrite=True, progress=False)
    assert (report.action, report.total) == ("new", 1)
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["SYN_0000.nii.gz"]


def test_append_refuses_different_labels(tmp_path, baseline_source):
    out = tmp_path / "syn"
    sample_to_directory(baseline_source, settings(baseline_source, patients=1), out, progress=False)
    other = dataclasses.replace(baseline_source, dataset=source_dataset(label_names=[n.upper() for n in LABEL_NAMES]))
    with pytest.raises(OutputDirError, match=r"the generator produces label names \[.BACKGROUND., .*\] instead of \[.background.,"):
        sample_to_directory(other, settings(other, patients=1), out, append=True, progress=False)


class Interrupt(Exception):
    pass


class FailingSlices(RecordingSlices):
    """Raises after `calls_allowed` network calls, like a killed process."""

    def __init__(self, inner, calls_allowed):
        super().__init__(inner)
        self.calls_allowed = calls_allowed

    def __call__(self, *args):
        if len(self.calls) == self.calls_allowed:
            raise Interrupt
        return super().__call__(*args)


def test_resume_writes_only_missing_patients(tmp_path, baseline_source):
    complete = tmp_path / "complete"
    sample_to_directory(baseline_source, settings(baseline_source, patients=4), complete, batch=6, progress=False)

    out = tmp_path / "resumed"
    failing = dataclasses.replace(baseline_source, slices=FailingSlices(baseline_source.slices, calls_allowed=2))
    with pytest.raises(Interrupt):
        sample_to_directory(failing, settings(baseline_source, patients=4), out, batch=6, progress=False)
    log = SynthesisLog.load(out / "synthesis.json")
    done = [p.case_id for p in log.patients]
    assert 1 <= len(done) < 4 and not log.sessions[-1].complete
    # Debris of an interruption: a half-written file and an unrecorded case the writer had written.
    (out / "imagesTr" / "SYN_0003_0000.nii.gz.partial").write_bytes(b"half")
    NnUNetRawWriter(out, [], [], []).write_file(out / "labelsTr" / "SYN_0003.nii.gz", b"stale")
    stamps = {p: p.stat().st_mtime_ns for p in (out / "labelsTr").glob("*.nii.gz") if p.stem[:8] in done}

    recorder = RecordingSlices(baseline_source.slices)
    resumed = dataclasses.replace(baseline_source, slices=recorder)
    report = sample_to_directory(resumed, settings(baseline_source, patients=4), out, batch=6, progress=False)
    assert (report.action, report.written, report.total) == ("resume", 4 - len(done), 4)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # finished patients not rewritten
    assert not list(out.rglob("*.partial"))
    # Only the missing candidates went through the networks, starting right after the last written one.
    missing = [plan_patient(j, 0, (16,), 1, SLICE_COUNTS) for j in range(len(done), 4)]
    expected_z = torch.cat([plan.latents[0] for plan in missing])
    seen_z = torch.cat([call[0][0] for call in recorder.calls])
    assert torch.equal(seen_z[: len(expected_z)], expected_z)
    assert len(seen_z) < len(expected_z) + 6  # at most the rest of one batch beyond them
    a, b = read_arrays(complete), read_arrays(out)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-3)


def test_resume_refuses_different_settings(tmp_path, baseline_source):
    out = tmp_path / "syn"
    failing = dataclasses.replace(baseline_source, slices=FailingSlices(baseline_source.slices, calls_allowed=1))
    with pytest.raises(Interrupt):
        sample_to_directory(failing, settings(baseline_source, patients=3), out, batch=4, progress=False)
    with pytest.raises(OutputDirError, match="interrupted.*truncation_psi"):
        sample_to_directory(baseline_source, settings(baseline_source, patients=3, truncation_psi=0.5), out,
                            append=True, progress=False)


# ----------------------------------------------------------------------------------------------
# Quality gate


def test_quality_gate_rejections_are_counted(tmp_path, baseline_source):
    sampler = PatientSampler(baseline_source.slices, SLICE_COUNTS, seed=0, batch=8)
    fractions = [float((p.labels != 0).float().mean()) for p in sampler.candidates(count=6)]
    threshold = float(np.median(fractions))
    gate = QualityGate(min_label_fraction=threshold, keep_empty=True)
    report = sample_to_directory(baseline_source, settings(baseline_source, patients=2, quality_gate=gate),
                                 tmp_path / "syn", batch=8, progress=False)
    log = SynthesisLog.load(tmp_path / "syn" / "synthesis.json")
    accepted = [p.candidate for p in log.patients]
    expected = [j for j, f in enumerate(fractions) if f >= threshold][:2]
    assert accepted == expected
    rejected_before = sum(1 for f in fractions[: accepted[-1]] if f < threshold)
    assert report.rejected == {"label fraction below minimum": rejected_before}
    assert log.sessions[-1].rejected == report.rejected
    assert all(p.label_fraction >= threshold for p in log.patients)


def test_quality_gate_gives_up_with_a_clear_error(tmp_path, baseline_source):
    gate = QualityGate(min_label_fraction=1.0, max_label_fraction=1.0)
    with pytest.raises(QualityGateError, match="rejected 11 candidates"):
        sample_to_directory(baseline_source, settings(baseline_source, patients=1, quality_gate=gate),
                            tmp_path / "syn", batch=16, progress=False)
    log = SynthesisLog.load(tmp_path / "syn" / "synthesis.json")
    assert sum(log.sessions[-1].rejected.values()) == 11 and not log.patients


def test_quality_gate_reasons():
    gate = QualityGate(min_label_fraction=0.1, max_label_fraction=0.5)
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    images = torch.zeros(2, 1, 4, 4)
    assert gate.rejection(images, labels) == "empty mask"
    labels[0, :2] = 1  # 8 of 32 voxels
    assert gate.rejection(images, labels) is None
    labels[1] = 3  # 24 of 32
    assert gate.rejection(images, labels) == "label fraction above maximum"
    images[0, 0, 0, 0] = float("nan")
    assert gate.rejection(images, labels) == "non-finite image values"
    with pytest.raises(ValueError, match="min_label_fraction"):
        QualityGate(min_label_fraction=0.6, max_label_fraction=0.5)


# ----------------------------------------------------------------------------------------------
# Checkpoints, incompatible pipelines, the CLI


def save_run(run_dir: Path, variant: str, cond: str = "slice-position", resolution: int = RES,
             label_names=LABEL_NAMES, seed: int = 0, drop_end_slices: int = 0, raw_seed: int | None = None) -> Path:
    """A training run with one snapshot of an untrained tiny generator, in the checkpoint format.

    G_ema is built with `seed`; with raw_seed the snapshot also holds a training generator G built
    with that seed (other weights than G_ema)."""
    c_dim = 1 if cond == "slice-position" else 0
    network = tiny_network(c_dim, resolution)
    config = TrainConfig(variant=variant, cond=cond, resolution=resolution, network=network,
                         drop_end_slices=drop_end_slices)
    G = tiny_generator(variant, c_dim, seed=seed, resolution=resolution)
    affine = np.diag([2.0, 2.0, 3.0, 1.0]).tolist()
    data = DatasetInfo(name="phantom", fingerprint="f" * 64, modalities=MODALITIES, label_values=LABEL_VALUES,
                       label_names=list(label_names), resolution=resolution,
                       intensity=[{"lo": 0.0, "hi": 1000.0}] * len(MODALITIES), affine=affine,
                       spacing=[2.0, 2.0, 3.0], slices_per_patient=SLICE_COUNTS)
    tensors = {"G_ema": G.state_dict()}
    if raw_seed is not None:
        tensors["G"] = tiny_generator(variant, c_dim, seed=raw_seed, resolution=resolution).state_dict()
    content = SnapshotContent(tensors=tensors,
                              documents={"config": to_mapping(config), "dataset": dataclasses.asdict(data),
                                         "progress": {"nimg": 2000}})
    write_snapshot(run_dir, 2000, content)
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {"baseline": save_run(root / "baseline", "baseline"),
            "mask": save_run(root / "mask", "mask", seed=1),
            "conditional": save_run(root / "conditional", "conditional", seed=2),
            "mask32": save_run(root / "mask32", "mask", resolution=32),
            "mask_renamed": save_run(root / "mask_renamed", "mask", label_names=[n + "_x" for n in LABEL_NAMES]),
            "mask_none": save_run(root / "mask_none", "mask", cond="none"),
            "baseline_drop": save_run(root / "baseline_drop", "baseline", drop_end_slices=1)}


def test_load_source_refuses_incompatible_pipelines(runs):
    with pytest.raises(ValueError, match="'baseline' run, the pair needs a 'mask' run"):
        load_source(mask_gan=runs["baseline"], image_gan=runs["conditional"])
    with pytest.raises(ValueError, match="--gan .* is a 'mask' run"):
        load_source(gan=runs["mask"])
    with pytest.raises(ValueError, match="the image run has resolution 16 instead of 32 of the mask run"):
        load_source(mask_gan=runs["mask32"], image_gan=runs["conditional"])
    with pytest.raises(ValueError, match="the image run has label names .* instead of"):
        load_source(mask_gan=runs["mask_renamed"], image_gan=runs["conditional"])
    with pytest.raises(ValueError, match="cond 'slice-position' instead of 'none'"):
        load_source(mask_gan=runs["mask_none"], image_gan=runs["conditional"])
    with pytest.raises(ValueError, match="not both"):
        load_source(gan=runs["baseline"], mask_gan=runs["mask"], image_gan=runs["conditional"])
    with pytest.raises(ValueError, match="needs both"):
        load_source(mask_gan=runs["mask"])


def test_runs_trained_without_stack_ends_sample_without_them(tmp_path, runs):
    source = load_source(gan=runs["baseline_drop"])
    assert source.dataset.drop_end_slices == 1
    np.testing.assert_allclose(source.dataset.affine[:3, 3], [0.0, 0.0, 3.0])  # origin at the first kept slice
    sample_to_directory(source, settings(source, patients=2), tmp_path / "syn", progress=False)
    log = SynthesisLog.load(tmp_path / "syn" / "synthesis.json")
    assert all(p.n_slices + 2 in SLICE_COUNTS for p in log.patients)


def test_cli_pair_writes_dataset_synthesis_record_and_preview(tmp_path, runs, capsys):
    out = tmp_path / "pair"
    status = cli_main(["--mask-gan", str(runs["mask"]), "--image-gan", str(runs["conditional"]), "--patients", "2",
                       "--out", str(out), "--psi", "0.7", "--cutoff", "2", "--seed", "4", "--keep-empty",
                       "--preview", "--quiet"])
    assert status == 0
    assert "wrote 2 patients" in capsys.readouterr().out
    record = json.loads((out / "synthesis.json").read_text())
    session = record["sessions"][0]
    assert [g["role"] for g in session["settings"]["generators"]] == ["mask", "image"]
    for g in session["settings"]["generators"]:
        assert len(g["sha256"]) == 64 and g["checkpoint"].endswith("G_ema.safetensors")
    assert (session["settings"]["truncation_psi"], session["settings"]["truncation_cutoff"]) == (0.7, 2)
    assert session["settings"]["seed"] == 4 and {"torch", "numpy", "nibabel", "python"} <= session["versions"].keys()
    assert session["complete"] and len(session["patients"]) == 2
    png = matplotlib.image.imread(out / "preview.png")
    assert png.ndim == 3 and png.shape[0] > 100 and png.shape[1] > 500

    # The same command again: nothing to sample; the preview gains rows of real patients.
    real = write_phantom_dataset(tmp_path / "real", n_patients=2, shape=(16, 16, 8), layout="nnunet")
    status = cli_main(["--mask-gan", str(runs["mask"]), "--image-gan", str(runs["conditional"]), "--patients", "2",
                       "--out", str(out), "--psi", "0.7", "--cutoff", "2", "--seed", "4", "--keep-empty",
                       "--preview-real", str(real), "--quiet"])
    assert status == 0 and "nothing to do" in capsys.readouterr().out
    with_real = matplotlib.image.imread(out / "preview.png")
    assert with_real.shape[1] == png.shape[1] and with_real.shape[0] > 1.5 * png.shape[0]

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--gan", str(runs["baseline"]), "--patients", "2", "--out", str(out), "--quiet"])
    assert exit_info.value.code == 2
    assert "--append" in capsys.readouterr().err


def test_sources_sample_the_ema_generator(tmp_path):
    run = save_run(tmp_path / "run", "baseline", seed=0, raw_seed=5)
    source = load_source(gan=run)
    ema, raw = tiny_generator("baseline", 1, seed=0), tiny_generator("baseline", 1, seed=5)
    loaded = source.slices.generator.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in ema.state_dict().items())
    assert not all(torch.equal(loaded[k], v) for k, v in raw.state_dict().items())
    (generator,) = source.generators
    assert generator.checkpoint.endswith("G_ema.safetensors")
    manifest = json.loads((Path(generator.checkpoint).parent / "manifest.json").read_text())
    assert generator.sha256 == manifest["files"]["G_ema.safetensors"]


def test_cli_truncation_psi_and_cutoff_reach_the_generator(tmp_path, runs):
    """psi 0 on every layer maps every slice of every patient to w_avg (one image); a cutoff keeps the
    later layers' own w, so slices differ again."""
    def sample(name: str, *truncation: str) -> np.ndarray:
        argv = ["--gan", str(runs["baseline"]), "--patients", "2", "--slices", "3", "--out", str(tmp_path / name),
                "--keep-empty", "--quiet", "--device", "cpu", *truncation]
        assert cli_main(argv) == 0
        files = sorted((tmp_path / name / "imagesTr").glob("SYN_*_0000.nii.gz"))
        assert len(files) == 2
        return np.concatenate([np.asarray(nib.load(f).dataobj) for f in files], axis=-1)  # [X, Y, 2 x 3 slices]

    full = sample("psi0", "--psi", "0")
    np.testing.assert_allclose(full, np.broadcast_to(full[..., :1], full.shape), rtol=0, atol=1e-3)
    cut = sample("psi0_cutoff2", "--psi", "0", "--cutoff", "2")
    assert np.abs(cut - cut[..., :1]).max() > 1.0
    untruncated = sample("psi1")
    assert np.abs(untruncated - untruncated[..., :1]).max() > 1.0


def test_cli_names_the_problem_on_bad_input(tmp_path, runs, capsys):
    for argv, message in ((["--gan", str(tmp_path / "missing")], "no such run"),
                          (["--gan", str(runs["mask"])], "is a 'mask' run"),
                          (["--gan", str(runs["baseline"]), "--patients", "0"], "--patients must be >= 1"),
                          (["--patients", "1"], "give --gan RUN")):
        argv = [*argv, "--out", str(tmp_path / "out"), "--quiet"]
        if "--patients" not in argv:
            argv += ["--patients", "1"]
        with pytest.raises(SystemExit) as exit_info:
            cli_main(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_cli_help_lists_every_option_with_defaults(capsys):
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    text = capsys.readouterr().out
    for option in ("--gan", "--mask-gan", "--image-gan", "--patients", "--out", "--psi", "--cutoff", "--seed",
                   "--device", "--batch", "--slices", "--min-label-fraction", "--preview", "--append", "--overwrite"):
        assert option in text
    assert "(default: 16)" in text and "(default: 1.0)" in text and "(default: auto)" in text


def test_preview_montage_has_a_row_per_case(tmp_path):
    rng = np.random.default_rng(0)
    cases = [PreviewCase(f"case{i}", rng.normal(size=(2, 12, 12, 5)).astype(np.float32),
                         rng.integers(0, 3, size=(12, 12, 5)) * 5) for i in range(3)]
    path = write_preview(tmp_path / "p.png", [("real", cases[:1]), ("synthetic", cases[1:])], ["T1", "T2"],
                         [0, 5, 10], ["background", "a", "b"], slices_per_case=2)
    image = matplotlib.image.imread(path)
    assert image.shape[0] > image.shape[1] * 0.3 and image.shape[2] in (3, 4)
    assert not list(tmp_path.glob("*.partial"))
    with pytest.raises(ValueError, match="case0"):
        write_preview(tmp_path / "q.png", [("real", cases[:1])], ["T1"], [0, 5, 10], ["background", "a", "b"])


def test_files_sampling_did_not_write_are_never_deleted(tmp_path, baseline_source):
    out = tmp_path / "out"
    sample_to_directory(baseline_source, settings(baseline_source, patients=2), out, batch=6, progress=False)
    real = write_phantom_dataset(tmp_path / "real", n_patients=2, shape=(16, 16, 4), layout="nnunet")
    copied = []
    for folder in ("imagesTr", "labelsTr"):  # a user copies two real patients into the synthetic folder
        for path in sorted((real / folder).glob("*.nii.gz")):
            shutil.copy(path, out / folder / path.name)
            copied.append(out / folder / path.name)
    (out / "README.txt").write_text("my notes")
    for kwargs in ({"append": True}, {"overwrite": True}):
        with pytest.raises(OutputDirError, match=r"file\(s\) in imagesTr/ or labelsTr/ were not written by "
                                                 r"sample_patients.py \(phantom_000"):
            sample_to_directory(baseline_source, settings(baseline_source, patients=1), out, batch=6,
                                progress=False, **kwargs)
        assert all(path.is_file() for path in copied) and (out / "README.txt").is_file()


def forge(run: Path, tmp_path: Path, name: str, change) -> Path:
    """A copy of ``run`` whose snapshot file ``name`` (JSON) is changed by ``change`` and re-hashed in
    the manifest, as a forger would."""
    import hashlib

    forged = tmp_path / f"forged-{name}"
    shutil.copytree(run, forged)
    snapshot = next(forged.glob("snapshot-*"))
    document = json.loads((snapshot / name).read_text())
    change(document)
    (snapshot / name).write_text(json.dumps(document))
    manifest = json.loads((snapshot / "manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256((snapshot / name).read_bytes()).hexdigest()
    (snapshot / "manifest.json").write_text(json.dumps(manifest))
    return forged


def test_forged_checkpoints_and_absurd_arguments_get_one_line_errors(tmp_path, runs, capsys):
    def huge_mapping(config):
        config["network"]["mapping_layers"] = 10 ** 7

    def huge_stack(dataset):
        dataset["slices_per_patient"] = [10 ** 7]

    def nan_range(dataset):
        dataset["intensity"][0] = {"lo": float("nan"), "hi": 1.0}

    def add_key(dataset):
        dataset["extra"] = 1

    cases = [("config.json", huge_mapping, "mapping_layers = 10000000 exceeds the largest supported 32"),
             ("dataset.json", huge_stack, "1..4096 slices per patient"),
             ("dataset.json", add_key, "unknown keys \\['extra'\\]"),
             ("dataset.json", nan_range, "intensity range of 'T1' is \\[nan, 1.0\\]")]
    for name, change, message in cases:
        forged = forge(runs["baseline"], tmp_path / change.__name__, name, change)
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["--gan", str(forged), "--patients", "1", "--out", str(tmp_path / "o"), "--quiet"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert re.search(message, err) and "Traceback" not in err and len(err.strip().splitlines()) == 1
    for argv, message in ((["--psi", "nan"], "--psi must be a number in \\[0, 2\\]"), (["--psi", "1e30"], "--psi"),
                          (["--slices", "100000000"], "--slices in 1..4096")):
        with pytest.raises(SystemExit):
            cli_main(["--gan", str(runs["baseline"]), "--patients", "1", "--out", str(tmp_path / "o"), *argv])
        assert re.search(message, capsys.readouterr().err)


def test_integer_weights_are_refused_not_cast(tmp_path, runs, capsys):
    from safetensors.torch import load_file, save_file

    forged = tmp_path / "int8"
    shutil.copytree(runs["baseline"], forged)
    snapshot = next(forged.glob("snapshot-*"))
    weights = load_file(str(snapshot / "G_ema.safetensors"))
    first = sorted(weights)[0]
    weights[first] = weights[first].to(torch.int8)
    save_file(weights, str(snapshot / "G_ema.safetensors"))
    import hashlib
    manifest = json.loads((snapshot / "manifest.json").read_text())
    manifest["files"]["G_ema.safetensors"] = hashlib.sha256((snapshot / "G_ema.safetensors").read_bytes()).hexdigest()
    (snapshot / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit):
        cli_main(["--gan", str(forged), "--patients", "1", "--out", str(tmp_path / "o"), "--quiet"])
    assert "are not floating point" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_one_line(tmp_path, runs, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--gan", str(runs["baseline"]), "--patients", "1", "--out", str(tmp_path / "o"), "--device", "cuda"])
    assert exit_info.value.code == 2
    assert "--device 'cuda': CUDA is not available on this machine (use cpu or auto)" in capsys.readouterr().err


def test_preview_wraps_a_long_legend_and_keeps_the_voxel_aspect(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 116, size=(20, 10, 6))  # an atlas with 116 labels, 2:1 anisotropic in-plane
    case = PreviewCase("atlas", rng.random((1, 20, 10, 6)).astype(np.float32), labels, (1.0, 2.0, 3.0))
    path = write_preview(tmp_path / "p.png", [("atlas", [case])], ["T1"], list(range(116)),
                         [f"region_{i}" for i in range(116)], slices_per_case=2)
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert height > 2 * 130  # the legend wrapped into rows below the images instead of one cut-off line
    assert width < 2000


def test_sampling_in_a_log_file_writes_a_progress_line_per_patient(baseline_source, tmp_path, capsys):
    sample_to_directory(baseline_source, settings(baseline_source, patients=2), tmp_path / "syn", batch=4,
                        progress=True)      # pytest's stderr is not a terminal: lines, no bar
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sampling: ")]
    assert [line.split(",")[0] for line in lines] == ["sampling: 1/2 patients", "sampling: 2/2 patients"]
    assert lines[-1].startswith("sampling: 2/2 patients, SYN_0001, ") and lines[-1].endswith("s/patient, ETA 0.0 min")


def test_log_lines_are_the_first_the_last_and_one_per_interval_between(capsys, monkeypatch):
    from training import progress

    clock = iter([0.0, 1.0, 2.0, 7.0, 8.0, 9.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    lines = progress.LogLines("work", 5, "item")       # started at t = 0
    for _ in range(5):                                 # items at t = 1, 2, 7, 8, 9
        lines.step()
    shown = [line.split(",")[0] for line in capsys.readouterr().err.splitlines()]
    assert shown == ["work: 1/5 items", "work: 3/5 items", "work: 5/5 items"]

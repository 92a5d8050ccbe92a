"""The whole sampling stage: sample, gate, write, record, preview (`sample_to_directory`)."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from training.data.nifti import StoredStyle
from training.data.records import meaning_differences
from training.data import load_dataset
from training.progress import LogLines
from training.sampling.generators import SamplingSource
from training.sampling.planning import PatientSampler, candidate_seed
from training.sampling.volumes import SourceDataset, to_volumes
from training.sampling.patient_preview import PreviewCase, read_case, write_preview
from training.sampling.nnunet_writer import NnUNetRawWriter
from training.sampling.synthetic_dataset import (OutputDirError, PREVIEW_NAME, PatientRecord,
                                                 SamplingSession, SamplingSettings, SynthesisLog,
                                                 exclusive_output, now_utc, open_output)


CASE_PREFIX = "SYN"

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

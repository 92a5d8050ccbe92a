"""Procedural synthetic patients on disk: real training patients -> `procedural` synthesiser ->
the same nnU-Net v2 raw layout as GAN sampling, plus synthesis.json and an instance volume.

    DIR/imagesTr/SYN_0000_000m.nii.gz, DIR/labelsTr/SYN_0000.nii.gz, DIR/dataset.json
    DIR/instancesTr/SYN_0000.nii.gz   object ids (0: none) for synthesisers that insert objects
    DIR/synthesis.json                synthesiser, config, seed, the source dataset (fingerprint) and
                                      its case ids used, and per patient: the real patients it was
                                      made from and the objects inserted

Patient j is synthesised from (sources, config, seed, j) alone, so an interrupted run, or a later
run asking for more patients with the same settings, continues where the recorded patients end;
different settings in a folder that holds patients are refused, never overwritten.  Volumes keep
the source patient's grid and header (canonical orientation, its affine).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from procedural import LabelSet, VolumePatient, build_synthesiser, load_synthesiser_config
from training.data import Dataset
from training.data.fsutils import atomic_write_json
from training.data.nifti import read_stored_style
from training.progress import LogLines
from training.sampling.nnunet_writer import NnUNetRawWriter
from training.sampling.patient_preview import PreviewCase, read_case, write_preview
from training.sampling.synthetic_dataset import (PREVIEW_NAME, OutputDirError, exclusive_output, now_utc,
                                                 software_versions)

PROCEDURAL_FORMAT = "stylepair-procedural/1"
PREVIEW_CASES = 3


def volume_patient(dataset: Dataset, case_id: str) -> VolumePatient:
    """A real patient of ``dataset`` as the synthesisers take it (images in its units, real label values)."""
    patient = dataset.patient(case_id)
    return VolumePatient(case_id, patient.load_images(), patient.load_label(), np.asarray(patient.affine))


@dataclass
class ProceduralReport:
    """What `synthesise_to_directory` did: "new", "resume" or "complete", patients written and in the
    folder, the recorded source case ids of every patient, the preview (or None)."""

    out_dir: Path
    action: str
    written: int
    total: int
    sources: dict[str, list[str]]
    preview: Path | None


def _identity(name: str, config, seed: int, dataset: Dataset, case_ids: list[str]) -> dict:
    return {"synthesiser": name, "config": json.loads(json.dumps(dataclasses.asdict(config), default=list)),
            "seed": seed, "source": {"dataset": dataset.name, "root": str(dataset.root),
                                     "fingerprint": dataset.fingerprint(), "cases": list(case_ids)}}


def _open_log(out_dir: Path, identity: dict, dataset: Dataset, defaults: dict) -> tuple[dict, str]:
    """The log to continue (or a new one) and "new" / "resume"; OutputDirError for a folder that
    holds anything else.  ``defaults``: the config's default settings, which a log written before a
    setting existed had (so its folder still resumes)."""
    log_path = out_dir / "synthesis.json"
    if log_path.is_file():
        try:
            log = json.loads(log_path.read_text())
        except json.JSONDecodeError as exc:
            raise OutputDirError(f"{log_path}: unreadable ({exc}); choose another --out") from None
        stored = {k: log.get(k) for k in identity}
        if isinstance(stored["config"], dict):
            stored["config"] = {**defaults, **stored["config"]}
        if log.get("format") != PROCEDURAL_FORMAT or stored != identity:
            raise OutputDirError(f"{out_dir}: holds synthetic patients made with other settings (another synthesiser, "
                                 f"config, seed or source patients); choose another --out")
        return log, "resume"
    if out_dir.exists() and any(out_dir.iterdir()):
        raise OutputDirError(f"{out_dir}: directory is not empty and holds no synthesis.json; refusing to write "
                             f"into it (choose an empty --out)")
    return {"format": PROCEDURAL_FORMAT, "pipeline": "procedural", **identity, "modalities": dataset.modalities,
            "label_values": dataset.label_values, "label_names": dataset.label_names, "patients": []}, "new"


def synthesise_to_directory(dataset: Dataset, case_ids: list[str], name: str, config, patients: int, seed: int,
                            out_dir: str | Path, preview: bool = False, progress: bool = True) -> ProceduralReport:
    """Make ``patients`` synthetic patients with synthesiser ``name`` (config: a YAML path, a mapping,
    a config object or None) from the real patients ``case_ids`` of ``dataset`` into ``out_dir``.

    Raises `procedural.ProceduralError` for an unusable config or sources, `OutputDirError` for a
    folder that holds other data.
    """
    if patients < 1:
        raise ValueError(f"--patients must be >= 1, got {patients}")
    if not case_ids:
        raise ValueError(f"{name}: no real source patients given")
    out_dir = Path(out_dir)
    config = load_synthesiser_config(name, config) if not dataclasses.is_dataclass(config) else config
    identity = _identity(name, config, seed, dataset, case_ids)
    with exclusive_output(out_dir):
        defaults = json.loads(json.dumps(dataclasses.asdict(type(config)()), default=list))
        log, action = _open_log(out_dir, identity, dataset, defaults)
        done = len(log["patients"])
        first = dataset.patient(case_ids[0])   # stored like the real files (orientation, voxel types, codes)
        writer = NnUNetRawWriter(out_dir, dataset.modalities, dataset.label_values, dataset.label_names,
                                 style=read_stored_style(first.image_files[0], first.label_file, first.case_id),
                                 descrip=f"stylepair synthetic {name}", instance_labels=dataset.instance_labels)
        writer.remove_partial_files()
        if done < patients:
            sources = [volume_patient(dataset, c) for c in case_ids]
            synthesiser = build_synthesiser(name, config, sources, LabelSet(tuple(dataset.label_names),
                                                                            tuple(dataset.label_values)),
                                            dataset.modalities)
            lines = LogLines(name, patients, "patient", done, progress)
            for index in tqdm(range(done, patients), desc=name, unit="patient", disable=None if progress else True):
                patient = synthesiser.make(index, np.random.default_rng([seed, index]))
                case_id = f"SYN_{index:04d}"
                _write_patient(writer, case_id, patient)
                log["patients"].append({"case_id": case_id, "index": index, "sources": list(patient.sources),
                                        "objects": patient.objects})
                log.update(requested=max(patients, log.get("requested", 0)), versions=software_versions(),
                           updated=now_utc())
                atomic_write_json(out_dir / "synthesis.json", log)
                writer.write_dataset_json(len(log["patients"]), f"stylepair {name} patients from {dataset.name}")
                lines.step(f", {case_id}")
        else:
            action = "complete"
        preview_path = _preview(out_dir, dataset, log) if preview else None
    return ProceduralReport(out_dir, action, max(0, patients - done), len(log["patients"]),
                            {p["case_id"]: p["sources"] for p in log["patients"]}, preview_path)


def _write_patient(writer: NnUNetRawWriter, case_id: str, patient: VolumePatient) -> None:
    """Images, the instance volume (when there is one), then the label file last (the case is
    complete once its label file exists)."""
    if patient.instances is not None:
        folder = writer.root / "instancesTr"
        folder.mkdir(parents=True, exist_ok=True)
        writer.write_file(folder / f"{case_id}{writer.file_ending}", writer.encode(patient.instances, patient.affine,
                                                                              patient.instances.dtype.name))
    writer.write_case(case_id, patient.images, patient.labels, patient.affine)


def _preview(out_dir: Path, dataset: Dataset, log: dict) -> Path:
    """DIR/preview.png: a few synthetic patients, each below the real patient it was made from."""
    rows = []
    for record in log["patients"][:PREVIEW_CASES]:
        synthetic = read_case(out_dir, record["case_id"], len(dataset.modalities))
        source = volume_patient(dataset, record["sources"][0])
        objects = dataset.patient(source.case_id).load_instances()
        rows += [(f"source {source.case_id}", [PreviewCase(source.case_id, source.images, source.labels,
                                                           tuple(source.spacing), objects)]),
                 (f"{log['synthesiser']}", [synthetic])]
    return write_preview(out_dir / PREVIEW_NAME, rows, dataset.modalities, dataset.label_values, dataset.label_names)

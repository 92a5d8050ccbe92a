"""The synthetic dataset on disk: nnU-Net v2 raw layout (`training.sampling.nnunet_writer`) plus
synthesis.json.

    DIR/imagesTr/, labelsTr/, dataset.json  the cases, written by `NnUNetRawWriter`
    DIR/synthesis.json                      generators, checkpoint SHA-256, seeds, psi, versions, and
                                            every sampling session with the patients it wrote

A case is recorded in synthesis.json and counted in dataset.json (both replaced atomically) only
once its label file, written last, exists.  Only files the writer recorded with their very content
count as this tool's own: the unrecorded ones (debris of an interruption) are removed before
sampling continues, and anything else in imagesTr/ or labelsTr/ -- a user's file -- makes the run
stop with the files listed, never deleted.
`open_output` decides whether a directory is new, resumed, appended to, already complete or refused.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import platform
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Iterator

import torch

from training.data.fsutils import atomic_write_json
from training.data.records import meaning_differences
from training.sampling.nnunet_writer import PARTIAL_SUFFIX, NnUNetRawWriter

SYNTHESIS_FORMAT = "stylepair-synthesis/1"
GRIDS = ("real", "generator")
PREVIEW_NAME = "preview.png"


# ----------------------------------------------------------------------------------------------
# Provenance and the quality gate (both part of a session's settings)


@dataclass(frozen=True)
class GeneratorRecord:
    """One generator of the pipeline, as recorded in synthesis.json."""

    role: str  # "baseline" | "mask" | "image"
    variant: str  # "baseline" | "mask" | "conditional"
    run: str  # the path the user gave (run dir or snapshot dir)
    checkpoint: str  # the weights file actually loaded
    sha256: str
    kimg: float
    cond: str  # "none" | "slice-position"
    dataset_fingerprint: str = ""


@dataclass(frozen=True)
class QualityGate:
    """Rejects candidate patients whose mask or images are implausible.

    The label fraction is the share of non-background voxels in the whole volume. A mask without
    any foreground is rejected unless keep_empty; so are images with NaN/inf values.
    """

    min_label_fraction: float = 0.0
    max_label_fraction: float = 1.0
    keep_empty: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_label_fraction <= self.max_label_fraction <= 1.0:
            raise ValueError(
                f"need 0 <= min_label_fraction <= max_label_fraction <= 1, got "
                f"{self.min_label_fraction} and {self.max_label_fraction}")

    def rejection(self, images: torch.Tensor, labels: torch.Tensor) -> str | None:
        """images [S, M, H, W], labels [S, H, W] label indices -> None (accept) or the reason."""
        if not bool(torch.isfinite(images).all()):
            return "non-finite image values"
        fraction = float((labels != 0).float().mean())
        if fraction == 0.0 and not self.keep_empty:
            return "empty mask"
        if fraction < self.min_label_fraction:
            return "label fraction below minimum"
        if fraction > self.max_label_fraction:
            return "label fraction above maximum"
        return None


# ----------------------------------------------------------------------------------------------
# synthesis.json: what produced the dataset, and how far each sampling session got


@dataclass
class SamplingSettings:
    """What decides which patients a sampling session writes; a resumed session must match."""

    pipeline: str  # "baseline" | "pair"
    generators: list[GeneratorRecord]
    patients: int
    seed: int = 0
    truncation_psi: float = 1.0
    truncation_cutoff: int | None = None
    slices: int | None = None  # fixed slice count; None: drawn from the training patients
    quality_gate: QualityGate = field(default_factory=QualityGate)
    noise_mode: str = "const"  # noise inputs fixed per layer: a patient depends on its latents only
    grid: str = "real"         # real: the real patients' grid and header; generator: the slice frame, RAS float32

    def __post_init__(self) -> None:
        if self.patients < 1:
            raise ValueError(f"--patients must be >= 1, got {self.patients}")
        if self.slices is not None and self.slices < 1:
            raise ValueError(f"--slices must be >= 1, got {self.slices}")
        if self.truncation_cutoff is not None and self.truncation_cutoff < 0:
            raise ValueError(f"--cutoff must be >= 0, got {self.truncation_cutoff}")
        if self.grid not in GRIDS:
            raise ValueError(f"--grid must be one of {', '.join(GRIDS)}, got {self.grid!r}")

    def identity(self) -> dict:
        """The settings as compared on resume: generators by content (sha256), not by path."""
        out = dataclasses.asdict(self)
        out["generators"] = [{"role": g.role, "variant": g.variant, "sha256": g.sha256} for g in self.generators]
        return out


@dataclass
class PatientRecord:
    """One written patient: its case id, the candidate it came from, and what it holds."""

    case_id: str
    candidate: int
    candidate_seed: int
    n_slices: int
    label_fraction: float


@dataclass
class SamplingSession:
    """One invocation of the sampler on a directory (resumed invocations continue it)."""

    settings: SamplingSettings
    first_candidate: int
    next_candidate: int
    patients: list[PatientRecord] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=dict)
    complete: bool = False
    started: str = ""
    updated: str = ""
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


@dataclass
class SynthesisLog:
    """The content of synthesis.json: dataset meaning plus the sampling sessions, oldest first."""

    modalities: list[str]
    label_values: list[int]
    label_names: list[str]
    resolution: int
    sessions: list[SamplingSession] = field(default_factory=list)
    format: str = SYNTHESIS_FORMAT

    @property
    def patients(self) -> list[PatientRecord]:
        return [p for s in self.sessions for p in s.patients]

    def save(self, path: Path) -> None:
        """Write atomically as JSON."""
        atomic_write_json(path, dataclasses.asdict(self))

    @classmethod
    def load(cls, path: Path) -> SynthesisLog:
        """Read synthesis.json; a ValueError names the file and what is wrong with it."""
        try:
            raw = json.loads(Path(path).read_text())
            if raw.get("format") != SYNTHESIS_FORMAT:
                raise ValueError(f"format is {raw.get('format')!r}, expected {SYNTHESIS_FORMAT!r}")
            sessions = [_session_from_dict(s) for s in raw["sessions"]]
            return cls(list(raw["modalities"]), [int(v) for v in raw["label_values"]],
                       list(raw["label_names"]), int(raw["resolution"]), sessions)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{path}: not a readable stylepair synthesis.json ({type(exc).__name__}: {exc})") from exc


def _session_from_dict(raw: dict) -> SamplingSession:
    settings = {"grid": "generator", **raw["settings"]}   # written before --grid: the generator's frame
    settings["generators"] = [GeneratorRecord(**g) for g in settings["generators"]]
    settings["quality_gate"] = QualityGate(**settings["quality_gate"])
    fields = {k: v for k, v in raw.items() if k != "settings"}
    fields["patients"] = [PatientRecord(**p) for p in fields.get("patients", [])]
    return SamplingSession(SamplingSettings(**settings), **fields)


def software_versions() -> dict[str, str]:
    """Versions of Python and of the packages that shape the output."""
    versions = {"python": platform.python_version()}
    for package in ("stylepair", "torch", "numpy", "nibabel"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def now_utc() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------------------------
# The output directory: new, resumed, appended to, overwritten or refused


class OutputDirError(ValueError):
    """The output directory cannot be used as asked (existing data, incompatible content)."""


OWNED_ENTRIES = ("imagesTr", "labelsTr", "dataset.json", "synthesis.json", PREVIEW_NAME)


@contextlib.contextmanager
def exclusive_output(out_dir: Path, holder: str = "sampling process") -> Iterator[None]:
    """Create out_dir and hold an exclusive lock on it (flock on the directory itself, so nothing is
    left behind) for the block; OutputDirError at once when another process (a ``holder``) holds it.
    The kernel releases the lock of a process that dies."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputDirError(f"{out_dir}: exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise OutputDirError(f"{out_dir}: another {holder} is writing into it") from exc
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _is_empty(out_dir: Path) -> bool:
    """True when out_dir is missing or holds nothing but temporary files."""
    return not out_dir.exists() or all(p.name.endswith(PARTIAL_SUFFIX) for p in out_dir.iterdir())


def open_output(out_dir: Path, settings: SamplingSettings, empty: SynthesisLog, append: bool = False,
                overwrite: bool = False) -> tuple[SynthesisLog, str]:
    """Decide what to do with out_dir; `empty` is a log without sessions that says which modalities,
    labels and resolution the new patients have. Returns the log whose last session is the one to run, and
    the action: "new", "resume" (an interrupted session with identical settings, also when
    --append is given), "append" (a new session after the existing patients) or "complete" (the
    same settings already ran to completion: nothing to write).

    Refuses (OutputDirError) a non-empty directory unless resuming, appending or overwriting;
    --overwrite deletes only what this tool writes (imagesTr, labelsTr, dataset.json,
    synthesis.json, preview.png), and only in a directory this tool wrote (with synthesis.json).
    """
    out_dir = Path(out_dir)
    if append and overwrite:
        raise OutputDirError("--append and --overwrite exclude each other")
    log_path = out_dir / "synthesis.json"
    if overwrite:
        _remove_synthetic_dataset(out_dir)
    if overwrite or _is_empty(out_dir):
        empty.sessions.append(_new_session(settings, first_candidate=0))
        return empty, "new"
    if not log_path.is_file():
        raise OutputDirError(
            f"{out_dir}: directory is not empty and holds no synthesis.json; refusing to write into it "
            f"(choose an empty --out, or pass --overwrite to replace its imagesTr/, labelsTr/ and dataset.json)")
    log = SynthesisLog.load(log_path)
    _check_same_meaning(log, empty, log_path)
    last = log.sessions[-1] if log.sessions else None
    same = last is not None and last.settings.identity() == settings.identity()
    if last is not None and not last.complete:
        if same:
            return log, "resume"
        raise OutputDirError(
            f"{out_dir}: holds an interrupted sampling run with different settings "
            f"({_settings_difference(last.settings, settings)}); rerun it with its own settings to resume, "
            f"or pass --overwrite")
    if append:
        first = last.next_candidate if last is not None else 0
        log.sessions.append(_new_session(settings, first_candidate=first))
        return log, "append"
    if same:
        return log, "complete"
    raise OutputDirError(
        f"{out_dir}: already holds a synthetic dataset of {len(log.patients)} patients; pass --append to "
        f"add patients or --overwrite to replace it")


def _remove_synthetic_dataset(out_dir: Path) -> None:
    """Delete what sample_to_directory writes; refuses a dataset it did not write (e.g. real data),
    and a folder whose imagesTr/ or labelsTr/ hold files it did not write (listed)."""
    present = [name for name in OWNED_ENTRIES if (out_dir / name).exists()]
    if present and not (out_dir / "synthesis.json").is_file():
        raise OutputDirError(f"{out_dir}: holds {', '.join(present)} but no synthesis.json, so it is not a "
                             f"synthetic dataset written by stylepair; refusing to delete it even with --overwrite")
    writer = NnUNetRawWriter(out_dir, [], [], [])
    foreign = [p for folder in (writer.images_dir, writer.labels_dir) if folder.is_dir()
               for p in sorted(folder.iterdir()) if not p.name.endswith(PARTIAL_SUFFIX) and not writer.owns(p)]
    if foreign:
        raise OutputDirError(f"{out_dir}: {len(foreign)} file(s) in imagesTr/ or labelsTr/ were not written by "
                             f"sample_patients.py ({', '.join(p.name for p in foreign[:5])}); refusing to delete them "
                             f"even with --overwrite: move them out or choose another --out")
    for name in present:
        target = out_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()


def _new_session(settings: SamplingSettings, first_candidate: int) -> SamplingSession:
    now = now_utc()
    return SamplingSession(settings, first_candidate, first_candidate, started=now, updated=now,
                           versions=software_versions())


def _check_same_meaning(log: SynthesisLog, fresh: SynthesisLog, log_path: Path) -> None:
    """Appending or resuming must keep channels, labels and resolution of the existing patients."""
    differences = meaning_differences(log, fresh)
    if log.resolution != fresh.resolution:
        differences.append(f"resolution {fresh.resolution} instead of {log.resolution}")
    if differences:
        raise OutputDirError(f"{log_path}: the generator produces {'; '.join(differences)} of the existing patients; "
                             f"write to another --out or pass --overwrite")


def _settings_difference(old: SamplingSettings, new: SamplingSettings) -> str:
    a, b = old.identity(), new.identity()
    return ", ".join(f"{key} {a[key]!r} -> {b[key]!r}" for key in a if a[key] != b[key])

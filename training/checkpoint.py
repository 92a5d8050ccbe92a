"""Snapshots of a GAN training run: safetensors + JSON, checksummed, atomic, never pickled.

A run directory holds one folder per snapshot, ``snapshot-NNNNNNNNN`` (images seen, 9 digits)::

    G.safetensors  G_ema.safetensors  D.safetensors      weights and buffers
    optim_G.safetensors optim_G.json (same for D)        Adam moments; param groups, step counts
    rng.safetensors  rng.json                             torch / CUDA / numpy / python RNG states
    progress.json                                         images seen, tick, ADA p, PL mean, ...
    config.json  dataset.json  metrics.json               resolved config, data description
    manifest.json                                         sha256 of every file above (written last)

A snapshot is written into a hidden temporary folder next to its final place and renamed into
place when complete, so a crash never leaves a half-written snapshot under a valid name.  On load
the manifest checksums are verified; a snapshot that fails is skipped with a warning and the
previous good one is used.  Only safetensors and JSON are ever read: files that are pickles (or
``torch.save`` zip archives) are refused before any byte of them is interpreted.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

SNAPSHOT_PREFIX = "snapshot-"
SNAPSHOT_PATTERN = re.compile(r"^snapshot-(\d{9})$")
MANIFEST = "manifest.json"
FORMAT = "stylepair-snapshot"
FORMAT_VERSION = 1
# Files a generator-only export (what load_generator needs) keeps.
GENERATOR_FILES = ("config.json", "dataset.json", "progress.json", "metrics.json")


class CheckpointError(RuntimeError):
    """A snapshot or run directory that cannot be used; the message names the path and problem."""


class SnapshotWarning(UserWarning):
    """A corrupted or partial snapshot was skipped."""


# --------------------------------------------------------------------------------------------
# low-level file I/O
# --------------------------------------------------------------------------------------------

def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _refuse_non_safetensors(path: Path) -> None:
    """Raise unless ``path`` starts like a safetensors file (u64 header length, then '{')."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    size = path.stat().st_size
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8:
        return
    if head[:1] == b"\x80" or head[:2] == b"PK":
        raise CheckpointError(f"{path}: is a pickle / torch.save archive; stylepair never loads "
                              "pickles (they can execute code). Expected a safetensors file.")
    raise CheckpointError(f"{path}: is not a safetensors file (bad header)")


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, on the CPU; anything else is refused with CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file missing")
    _refuse_non_safetensors(path)
    try:
        return load_file(str(path), device="cpu")
    except SafetensorError as err:
        raise CheckpointError(f"{path}: unreadable safetensors file ({err})") from err


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write tensors as safetensors (contiguous CPU copies; shared storage is fine)."""
    save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()},
              str(path))


def read_json(path: Path) -> Any:
    """Parsed JSON of ``path`` with a clear error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file missing")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: invalid JSON ({err})") from err
    except RecursionError:
        raise CheckpointError(f"{path}: JSON nested too deeply to be a stylepair file") from None


def write_json(path: Path, data: Any) -> None:
    """Write JSON (non-atomic; callers write into a temporary folder)."""
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
        handle.write("\n")


# --------------------------------------------------------------------------------------------
# optimizer and RNG state <-> (tensors, JSON)
# --------------------------------------------------------------------------------------------

def optimizer_state_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Split ``optimizer.state_dict()`` into safetensors-able tensors and a JSON document."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_state_from_files(tensors: dict[str, torch.Tensor], doc: dict) -> dict:
    """Rebuild an optimizer ``state_dict`` from `optimizer_state_to_files` output."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for index, entry in doc.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entry)
    groups = []
    for group in doc["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def capture_rng_state(generators: dict[str, torch.Generator] | None = None) -> tuple[dict, dict]:
    """RNG states of torch (CPU, every CUDA device), numpy, python ``random`` and named generators.

    Returns (tensors, json_doc) for ``rng.safetensors`` and ``rng.json``.
    """
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{index}"] = state
    for name, generator in (generators or {}).items():
        tensors[f"generator.{name}"] = generator.get_state()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy.keys"] = torch.from_numpy(np.asarray(keys, dtype=np.uint32).view(np.int32).copy())
    version, internal, gauss_next = random.getstate()
    doc = {"numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss),
                     "cached_gaussian": float(cached)},
           "python": {"version": version, "state": list(internal), "gauss_next": gauss_next}}
    return tensors, doc


def restore_rng_state(tensors: dict[str, torch.Tensor], doc: dict,
                      generators: dict[str, torch.Generator] | None = None) -> None:
    """Inverse of `capture_rng_state`; CUDA states are restored when CUDA is in use."""
    torch.set_rng_state(tensors["torch"])
    cuda = sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda][:torch.cuda.device_count()])
    for name, generator in (generators or {}).items():
        key = f"generator.{name}"
        if key not in tensors:
            raise CheckpointError(f"rng state has no generator '{name}'")
        generator.set_state(tensors[key])
    np_doc = doc["numpy"]
    keys = tensors["numpy.keys"].numpy().view(np.uint32)
    np.random.set_state((np_doc["kind"], keys, np_doc["pos"], np_doc["has_gauss"],
                         np_doc["cached_gaussian"]))
    py = doc["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))


# --------------------------------------------------------------------------------------------
# snapshots
# --------------------------------------------------------------------------------------------

@dataclass
class SnapshotContent:
    """What goes into one snapshot: named tensor files and named JSON documents."""

    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    documents: dict[str, Any] = field(default_factory=dict)


DEBRIS_PATTERN = re.compile(r"^\.snapshot-\d{9}\.(tmp|old)-")


def remove_snapshot_debris(run_dir: Path) -> list[Path]:
    """Delete the temporary folders that `write_snapshot` leaves when it is killed (``.snapshot-N.tmp-*``,
    ``.snapshot-N.old-*``: names only it uses); call while holding the run directory.  Returns them."""
    removed = [p for p in Path(run_dir).glob(".snapshot-*") if p.is_dir() and DEBRIS_PATTERN.match(p.name)]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def snapshot_name(nimg: int) -> str:
    """Folder name of the snapshot taken after ``nimg`` real images."""
    return f"{SNAPSHOT_PREFIX}{int(nimg):09d}"


def write_snapshot(run_dir: Path, nimg: int, content: SnapshotContent) -> Path:
    """Write a snapshot atomically; returns its folder. An existing one of that name is replaced."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / snapshot_name(nimg)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=run_dir))
    try:
        files: dict[str, str] = {}
        for name, tensors in content.tensors.items():
            write_tensors(tmp / f"{name}.safetensors", tensors)
            files[f"{name}.safetensors"] = sha256_of(tmp / f"{name}.safetensors")
        for name, doc in content.documents.items():
            write_json(tmp / f"{name}.json", doc)
            files[f"{name}.json"] = sha256_of(tmp / f"{name}.json")
        write_json(tmp / MANIFEST, {"format": FORMAT, "version": FORMAT_VERSION, "nimg": int(nimg),
                                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                    "files": files})
        # mkdtemp makes a private (0700) folder; snapshots are ordinary shared files
        os.chmod(tmp, 0o755)
        for child in tmp.iterdir():
            os.chmod(child, 0o644)
        if final.exists():
            stale = run_dir / f".{final.name}.old-{os.getpid()}"
            os.replace(final, stale)
            os.replace(tmp, final)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


@dataclass(frozen=True)
class VerifiedSnapshot:
    """A snapshot folder whose files named in ``verified`` matched its manifest's SHA-256 when this
    object was made (`verify_snapshot`, `latest_good_snapshot`): reading them again does not re-hash
    them. Path-like: ``snapshot / "config.json"``, ``os.fspath(snapshot)``, ``.name``, ``.parent``."""

    path: Path
    manifest: dict
    verified: frozenset

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def parent(self) -> Path:
        return self.path.parent


def verify_snapshot(snapshot: Path | VerifiedSnapshot, files: Iterable[str] | None = None) -> VerifiedSnapshot:
    """``snapshot`` after checking the SHA-256 of its manifest's files (``files``: only these of them, which
    must be listed; None: all); CheckpointError naming the first problem. Files an already verified
    snapshot checked are not hashed again."""
    if isinstance(snapshot, VerifiedSnapshot):
        manifest, done, snapshot = snapshot.manifest, snapshot.verified, snapshot.path
    else:
        snapshot, done = Path(snapshot), frozenset()
        manifest = read_json(snapshot / MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{snapshot / MANIFEST}: not a stylepair snapshot manifest")
    wanted = list(manifest["files"]) if files is None else list(files)
    for name in wanted:
        if name not in manifest["files"]:
            raise CheckpointError(f"{snapshot}: has no {name} (files: {', '.join(sorted(manifest['files']))})")
        path = snapshot / name
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            # a snapshot's files sit directly in its folder: a path elsewhere is a forged manifest
            raise CheckpointError(f"{snapshot / MANIFEST}: lists {name!r}, which is not a file of the snapshot folder")
        if name in done:
            continue
        if not path.is_file():
            raise CheckpointError(f"{path}: listed in the manifest but missing (partial snapshot)")
        if sha256_of(path) != manifest["files"][name]:
            raise CheckpointError(f"{path}: checksum mismatch (corrupted snapshot)")
    return VerifiedSnapshot(snapshot, manifest, done | frozenset(wanted))


def list_snapshots(run_dir: Path) -> list[Path]:
    """Snapshot folders of a run, oldest first (temporary folders are ignored)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and SNAPSHOT_PATTERN.match(p.name)]
    return sorted(found, key=lambda p: int(SNAPSHOT_PATTERN.match(p.name).group(1)))


def is_snapshot_dir(path: Path) -> bool:
    """True if ``path`` looks like a snapshot folder (has a manifest)."""
    return (Path(path) / MANIFEST).is_file()


def latest_good_snapshot(path: Path | VerifiedSnapshot, files: Iterable[str] | None = None) -> VerifiedSnapshot:
    """The newest snapshot under a run dir (or ``path`` itself) whose checksums verify (``files``: only
    those a caller will read; None: all), as a `VerifiedSnapshot` that later reads do not re-hash.

    Corrupted or partial snapshots are skipped with a `SnapshotWarning`; CheckpointError if none
    is usable.
    """
    if isinstance(path, VerifiedSnapshot):
        return verify_snapshot(path, files)
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such run or snapshot directory")
    if path.is_file():
        raise CheckpointError(f"{path}: expected a run directory or a snapshot directory, got a "
                              "file (stylepair checkpoints are folders of safetensors + JSON; "
                              "pickles are never loaded)")
    candidates = [path] if is_snapshot_dir(path) else list_snapshots(path)[::-1]
    if is_snapshot_dir(path) and SNAPSHOT_PATTERN.match(path.name):
        # A snapshot inside a run: fall back to older siblings if it is damaged.
        candidates += [p for p in list_snapshots(path.parent)[::-1]
                       if int(SNAPSHOT_PATTERN.match(p.name).group(1))
                       < int(SNAPSHOT_PATTERN.match(path.name).group(1))]
    if not candidates:
        raise CheckpointError(f"{path}: no snapshots found")
    problems = []
    for candidate in candidates:
        try:
            return verify_snapshot(candidate, files)
        except CheckpointError as err:
            problems.append(str(err))
            warnings.warn(f"skipping unusable snapshot {candidate}: {err}", SnapshotWarning,
                          stacklevel=2)
    raise CheckpointError(f"{path}: no usable snapshot:\n  " + "\n  ".join(problems))


def read_snapshot(snapshot: Path | VerifiedSnapshot, skip: Iterable[str] = ()) -> SnapshotContent:
    """Every file of a snapshot, verified (once: a `VerifiedSnapshot`'s checked files are not hashed
    again; tensor files named in ``skip`` are neither checked nor read)."""
    listed = verify_snapshot(snapshot, files=())            # the manifest, checked; nothing hashed yet
    skipped = set(skip)
    files = [name for name in listed.manifest["files"] if name.rsplit(".", 1)[0] not in skipped]
    snapshot = verify_snapshot(listed, files).path
    content = SnapshotContent()
    for name in files:
        stem, suffix = name.rsplit(".", 1)
        if suffix == "safetensors":
            content.tensors[stem] = read_tensors(snapshot / name)
        elif suffix == "json":
            content.documents[stem] = read_json(snapshot / name)
    return content


def prune_snapshots(run_dir: Path, keep_last: int, metric_key: str | None = None,
                    lower_is_better: bool = True) -> list[Path]:
    """Delete all but the newest ``keep_last`` snapshots and the best one by ``metric_key``.

    The best is read from each snapshot's metrics.json.  Returns the deleted folders.
    """
    snapshots = list_snapshots(run_dir)
    keep = set(snapshots[-keep_last:]) if keep_last > 0 else set()
    if metric_key:
        scored = []
        for snap in snapshots:
            try:
                value = read_json(snap / "metrics.json").get(metric_key)
            except CheckpointError:
                continue
            if isinstance(value, (int, float)) and np.isfinite(value):
                scored.append((value, snap))
        if scored:
            pick = min if lower_is_better else max
            keep.add(pick(scored, key=lambda t: t[0])[1])
    removed = []
    for snap in snapshots:
        if snap not in keep:
            shutil.rmtree(snap, ignore_errors=True)
            removed.append(snap)
    return removed


# --------------------------------------------------------------------------------------------
# generators for the sampling stage
# --------------------------------------------------------------------------------------------

@dataclass
class DatasetInfo:
    """What a trained generator must know about its training data (dataset.json of a snapshot).

    ``intensity`` holds, per modality, how [-1, 1] maps back to an intensity range; ``affine`` and
    ``spacing`` are typical header values for written volumes; ``slices_per_patient`` lists the
    number of (kept) slices of each training patient.  ``case_ids`` are the patients it trained
    on, ``excluded_case_ids`` those left out on purpose (``train_gan.py --exclude-cases/--splits``)
    and ``case_label_sha256`` identifies each training patient by content (its label file's bytes),
    so a study can tell whether its test patients reached the generator, wherever they are stored.
    """

    name: str = ""
    root: str = ""
    fingerprint: str = ""
    modalities: list[str] = field(default_factory=list)
    label_values: list[int] = field(default_factory=list)
    label_names: list[str] = field(default_factory=list)
    resolution: int = 0
    intensity: list[dict] = field(default_factory=list)
    affine: list[list[float]] = field(default_factory=list)
    spacing: list[float] = field(default_factory=list)
    slices_per_patient: list[int] = field(default_factory=list)
    case_ids: list[str] = field(default_factory=list)
    num_slices: int = 0
    excluded_case_ids: list[str] = field(default_factory=list)
    case_label_sha256: dict = field(default_factory=dict)  # case -> SHA-256 of its label file's bytes
    real_grid: dict = field(default_factory=dict)  # training.data.preprocess.RealGrid; {} before it was recorded


MAX_SLICES_PER_PATIENT = 4096


def _dataset_info(raw: Any, path: Path) -> DatasetInfo:
    """A snapshot's dataset.json as `DatasetInfo`, its fields checked (a forged file is a
    `CheckpointError`, never a traceback or a huge allocation)."""
    names = {f.name for f in fields(DatasetInfo)}
    if not isinstance(raw, dict) or set(raw) - names:
        raise CheckpointError(f"{path}: not a stylepair dataset record (unknown keys "
                              f"{sorted(set(raw) - names) if isinstance(raw, dict) else type(raw).__name__})")
    info = DatasetInfo(**raw)
    lists = ("modalities", "label_values", "label_names", "intensity", "affine", "spacing", "slices_per_patient",
             "case_ids", "excluded_case_ids")
    bad = [n for n in lists if not isinstance(getattr(info, n), list)]
    bad += [] if isinstance(info.case_label_sha256, dict) else ["case_label_sha256"]
    if info.real_grid:
        from training.data.preprocess import RealGrid
        try:
            RealGrid.from_dict(info.real_grid, str(path))
        except ValueError as err:
            raise CheckpointError(str(err)) from None
    slices = info.slices_per_patient if isinstance(info.slices_per_patient, list) else []
    if bad or not all(isinstance(z, int) and 1 <= z <= MAX_SLICES_PER_PATIENT for z in slices) \
            or not isinstance(info.resolution, int) or not 0 <= info.resolution <= 4096:
        raise CheckpointError(f"{path}: fields {bad or ['slices_per_patient', 'resolution']} are not what a stylepair "
                              f"dataset record holds (lists; 1..{MAX_SLICES_PER_PATIENT} slices per patient)")
    return info


@dataclass
class RunInfo:
    """A trained generator's description, returned by `load_generator`; what it knows of its training
    data is the snapshot's `DatasetInfo`, held as it is (``dataset``)."""

    variant: str
    network: Any                         # gan.NetworkConfig
    cond: str
    dataset: DatasetInfo
    kimg: float
    checkpoint: str                      # the weights file that was loaded
    sha256: str
    config: dict                         # the resolved training config
    metrics: dict = field(default_factory=dict)

    @property
    def image_channels(self) -> int:
        return len(self.dataset.modalities)

    @property
    def label_channels(self) -> int:
        return len(self.dataset.label_values)


def load_generator(path: str | Path, which: str = "G_ema", device: str | torch.device = "cpu"
                   ) -> tuple[torch.nn.Module, RunInfo]:
    """Build a trained generator from a run dir (its newest good snapshot) or a snapshot dir.

    ``which`` is "G_ema" (what to sample from) or "G".  The module is returned in eval mode with
    gradients off, on ``device``.  Only safetensors and JSON are read.
    """
    if which not in ("G_ema", "G"):
        raise ValueError(f"which must be 'G_ema' or 'G', got {which!r}")
    from gan import NetworkConfig, build_generator
    from gan.variants import VARIANTS
    from training.data.typed_config import from_mapping

    weights_name = f"{which}.safetensors"
    # only the files read here are hashed (not D, the optimizer, the RNG state)
    snapshot = latest_good_snapshot(Path(path), files=[weights_name, "config.json", "dataset.json", "progress.json"])
    manifest = snapshot.manifest
    if "metrics.json" in manifest["files"]:
        snapshot = verify_snapshot(snapshot, ["metrics.json"])
    config = read_json(snapshot / "config.json")
    data = _dataset_info(read_json(snapshot / "dataset.json"), snapshot / "dataset.json")
    progress = read_json(snapshot / "progress.json")
    metrics = read_json(snapshot / "metrics.json") if "metrics.json" in manifest["files"] else {}
    if not isinstance(config, dict) or not isinstance(config.get("network"), dict) or \
            config.get("variant") not in VARIANTS or not isinstance(progress, dict) or \
            not isinstance(progress.get("nimg"), int) or progress["nimg"] < 0:
        raise CheckpointError(f"{snapshot}: config.json or progress.json is not a stylepair training record "
                              f"(variant, network, nimg >= 0)")
    network = from_mapping(NetworkConfig, config["network"], str(snapshot / "config.json"), "network")
    generator = build_generator(config["variant"], network, image_channels=len(data.modalities),
                                label_channels=len(data.label_values))
    state = read_tensors(snapshot / weights_name)
    expected = generator.state_dict()
    cast = sorted(k for k, t in state.items() if k in expected and expected[k].is_floating_point()
                  and not t.is_floating_point())
    if cast:  # load_state_dict would silently cast int8 (or bool) weights to float
        raise CheckpointError(f"{snapshot / weights_name}: {len(cast)} weight(s) are not floating point "
                              f"({cast[0]}: {state[cast[0]].dtype}); not weights this project wrote")
    missing, unexpected = generator.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{snapshot / weights_name}: does not match the generator built from "
                              f"config.json (missing {missing[:5]}, unexpected {unexpected[:5]})")
    generator.eval().requires_grad_(False).to(device)
    info = RunInfo(variant=config["variant"], network=network, cond=config["cond"], dataset=data,
                   kimg=progress["nimg"] / 1000.0,
                   checkpoint=str(snapshot / weights_name),
                   sha256=manifest["files"][weights_name], config=config, metrics=metrics)
    return generator, info


def export_generator(snapshot: str | Path, out_dir: str | Path, which: str = "G_ema") -> Path:
    """Copy only what `load_generator` needs (one weights file + JSON) into ``out_dir``.

    Used for the small committed models under ``checkpoints/tiny-*``; the copy is a verified
    snapshot of its own (new manifest), written atomically.
    """
    snapshot = latest_good_snapshot(Path(snapshot))
    manifest = read_json(snapshot / MANIFEST)
    content = SnapshotContent()
    content.tensors[which] = read_tensors(snapshot / f"{which}.safetensors")
    for name in GENERATOR_FILES:
        if name in manifest["files"]:
            content.documents[name[:-5]] = read_json(snapshot / name)
    return write_snapshot(Path(out_dir), manifest["nimg"], content)


def dataset_info_to_dict(info: DatasetInfo) -> dict:
    """JSON-able dict of a DatasetInfo."""
    return asdict(info)


def main(argv: list[str] | None = None) -> int:
    """``python -m training.checkpoint {verify,export} ...``: check or slim down a run's snapshot."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m training.checkpoint",
                                     description="Verify a run's snapshots, or export the "
                                                 "generator-only copy that load_generator needs.")
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="print the newest good snapshot of a run")
    verify.add_argument("path", type=Path, help="run directory or snapshot directory")
    export = sub.add_parser("export", help="copy one generator + JSON into a new run directory")
    export.add_argument("path", type=Path, help="run directory or snapshot directory")
    export.add_argument("out", type=Path, help="output run directory")
    export.add_argument("--which", default="G_ema", choices=("G_ema", "G"),
                        help="which generator weights (default: G_ema)")
    args = parser.parse_args(argv)
    try:
        if args.command == "verify":
            print(latest_good_snapshot(args.path))
        else:
            print(export_generator(args.path, args.out, which=args.which))
    except CheckpointError as err:
        parser.exit(2, f"error: {err}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What data a results folder's runs were made from: a content fingerprint of every patient, so that
one folder never compares runs on old and new data.

    RESULTS/data.json   {"format": 1,
                         "sources": {"real/DATASET": {case: fingerprint}, "test/NAME": {...},
                                     "synthetic/DATASET/ARM": {...}, "procedural/ARM/BLOCK": {...}},
                         "accepted_changes": [{"when", "source", "cases"}]}

A fingerprint is the SHA-256 (16 hex digits) of a case's preprocessed slices (images and labels
as the runs read them from the slice cache), so touching a file without changing it is no change,
and re-sampling a synthetic folder or editing a real patient is.  Every invocation (every shard)
compares the patients it is about to use with the record: a difference is refused, naming the
source and the cases, unless accepted (``--accept-changed-data``), which the record and the
report keep.  New sources and cases are added to the record.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from training.data import SliceCache
from training.data.fsutils import atomic_write_json, file_lock

DATA_RECORD = "data.json"


class ChangedDataError(ValueError):
    """Patients differ from those the folder's earlier runs used (the message names them)."""


def case_fingerprint(cache: SliceCache, case_id: str) -> str:
    """SHA-256 (16 hex) of one case's preprocessed images and labels in ``cache``."""
    batch = cache.select(cache.rows_of(case_id))
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(batch.images).tobytes())
    digest.update(np.ascontiguousarray(batch.labels).tobytes())
    return digest.hexdigest()[:16]


def cache_fingerprints(cache: SliceCache, case_ids: list[str] | None = None) -> dict[str, str]:
    """{case: fingerprint} of ``case_ids`` (default: every case of the cache)."""
    return {case: case_fingerprint(cache, case) for case in (case_ids if case_ids is not None else cache.case_ids)}


def check_and_record(results: Path, sources: dict[str, dict[str, str]], accept_changed: bool = False) -> list[dict]:
    """Compare ``sources`` {source: {case: fingerprint}} with RESULTS/data.json and add them to it.

    Raises `ChangedDataError` when a recorded case has another fingerprint now, unless
    ``accept_changed``; returns the accepted changes of this call ({when, source, cases})."""
    path = results / DATA_RECORD
    with file_lock(results / f".{DATA_RECORD}.lock"):  # shards of one study share the record
        record = json.loads(path.read_text()) if path.is_file() else {"format": 1, "sources": {},
                                                                       "accepted_changes": []}
        changes = []
        for source, cases in sources.items():
            known = record["sources"].get(source, {})
            changed = sorted(c for c, fp in cases.items() if c in known and known[c] != fp)
            if changed:
                changes.append({"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                "source": source, "cases": changed})
        if changes and not accept_changed:
            first = changes[0]
            count = sum(len(c["cases"]) for c in changes)
            raise ChangedDataError(
                f"{results}: the data changed since this folder's runs were made: {first['source']} case(s) "
                f"{first['cases'][:5]}{' …' if len(first['cases']) > 5 else ''} ({count} case(s) in "
                f"{len(changes)} source(s)); runs on old and new data must not be compared in one report: use "
                f"another --results folder, or --accept-changed-data to go on (the report will say so)")
        for source, cases in sources.items():
            record["sources"].setdefault(source, {}).update(cases)
        record["accepted_changes"] += changes
        atomic_write_json(path, record)
    return changes


def accepted_changes(results: Path) -> list[dict]:
    """The changes accepted in RESULTS/data.json (empty when none or no record)."""
    path = results / DATA_RECORD
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text()).get("accepted_changes", []))
    except (OSError, json.JSONDecodeError):
        return []

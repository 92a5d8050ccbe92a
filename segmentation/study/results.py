"""A study's results folder: what each run stores, how a stored run is recognised, the tables made from them.

Results folder (``RESULTS``)::

    study.json              the study configuration (as validated)
    data.json               a content fingerprint of every patient the runs used (`segmentation.study.provenance`):
                            a later shard or re-run on changed data is refused
    runs/RUN_ID.json        one per finished run, written atomically at the end of the run:
                            run, config + fingerprint (`run_config`), budget rule, patients used, training
                            curve, metrics per test case and class, wall time, seed, software versions
    cases.csv               tidy table rebuilt from all run JSONs (under an fcntl lock): columns
                            `CASE_COLUMNS`; dice/hd95 empty = undefined (NaN; also a class the
                            patient's reference lacks, with empty_class: exclude; in_reference = 0),
                            hd95 "inf" = missed; rows with case `TEST_SET_CASE` score a whole test set
    splits/DATASET.json     the patient-level splits every shard and re-run uses
    tensorboard/RUN_ID/     training loss, validation score, test foreground Dice
    synthetic/ARM/          patients sampled from a GAN arm (nnU-Net v2 raw), shared by all runs
    synthetic/procedural/ARM/BLOCK/   patients of a procedural arm, made for one block (dataset, fold,
                            repeat, n) from that block's raw material only (`ArmSpec.raw_material`)

A finished run whose recorded configuration differs from the current one is an error (the results
folder belongs to another study definition), never silently reused; so is a run made with an old
seed scheme (`segmentation.study.grid.SEED_SCHEME`).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from pathlib import Path

import numpy as np

from segmentation.study.evaluation import FOREGROUND
from segmentation.study.grid import SEED_SCHEME, Run
from segmentation.study.instances import TEST_SET_METRICS
from segmentation.study.study_config import BASELINE_ARM, DatasetSpec, StudyConfig, fingerprint
from segmentation.study.study_data import IN_DISTRIBUTION, StudyDataError
from training.data.fsutils import atomic_write_text, file_lock

RESULT_FORMAT = 1
CASE_SCORES = ("dice", "hd95", "nsd", "detected", "false_positive", "lesion_sensitivity")   # `ClassScore`'s
OBJECT_SCORES = ("object_sensitivity", "object_false_positives")    # per case, instance classes (`instances`)
SCORE_COLUMNS = (*CASE_SCORES, *OBJECT_SCORES, *TEST_SET_METRICS)
CASE_COLUMNS = ("dataset", "fold", "repeat", "arm", "source", "n_synthetic", "n_real", "run_id", "test_set", "case",
                "class", "in_reference", *SCORE_COLUMNS)
RESULT_ENTRIES = frozenset({"study.json", "data.json", "cases.csv", "runs", "splits", "tensorboard", "synthetic",
                            "report"})


def run_config(run: Run, config: StudyConfig) -> dict:
    """The configuration that decides a run's result (stored in its JSON and fingerprinted).  Settings
    added later are left out at their defaults, so the runs of older results folders keep their
    fingerprints."""
    arm = None if run.arm == BASELINE_ARM else _without(dataclasses.asdict(config.arm(run.arm)), raw_material="run")
    return json.loads(json.dumps({
        "run": dataclasses.asdict(run), "dataset": _dataset_config(config.dataset(run.dataset)), "arm": arm,
        "splits": dataclasses.asdict(config.splits), "unet": dataclasses.asdict(config.unet),
        "train": dataclasses.asdict(config.train), "metrics": list(config.metrics),
        "empty_class": config.empty_class, "seed_scheme": SEED_SCHEME,
        **({"test_datasets": [_dataset_config(t) for t in config.test_datasets]} if config.test_datasets else {}),
        **({"nsd_tolerance_mm": config.nsd_tolerance_mm} if "nsd" in config.metrics else {}),
        **({"hd95_missed": config.hd95_missed} if "hd95" in config.metrics else {}),
        **({"instance_classes": config.instance_classes} if "map" in config.metrics else {}),
    }, default=list))


def _without(values: dict, **defaults: object) -> dict:
    """``values`` without the keys that hold the given default values."""
    return {k: v for k, v in values.items() if k not in defaults or v != defaults[k]}


def _dataset_config(spec: DatasetSpec) -> dict:
    values = dataclasses.asdict(spec)
    return {**values, "phantoms": _without(values["phantoms"], kind="mr")}


def json_number(value: float) -> float | str | None:
    """JSON has no NaN / inf: NaN -> null, inf -> "inf" (read back by `from_json_number`)."""
    if math.isnan(value):
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def from_json_number(value: float | str | None) -> float:
    """Inverse of `json_number`."""
    return math.nan if value is None else float(value)


def check_results_folder(results: Path) -> None:
    """`StudyDataError` unless ``results`` is new, empty, or a results folder of a study (it holds the
    study.json the study writes first): runs are never written into a dataset or a user's folder."""
    if results.exists() and not results.is_dir():
        raise StudyDataError(f"--results {results}: is a file, not a folder")
    if not results.is_dir() or (results / "study.json").is_file():
        return
    # what other shards starting at the same moment may already have written (study.json is written
    # atomically, so its temporary file can be there before it is)
    entries = sorted(p.name for p in results.iterdir() if p.name not in RESULT_ENTRIES
                     and not (p.name.startswith(".") and p.name.endswith((".tmp", ".lock"))))
    if not entries:
        return
    dataset = "dataset.json" in entries or "imagesTr" in entries
    raise StudyDataError(f"--results {results}: {'looks like a dataset' if dataset else 'is not empty'} and holds no "
                         f"study.json, so the study did not make it ({', '.join(entries[:5])}); choose a new or "
                         f"empty folder for the results")


def run_path(results: Path, run: Run) -> Path:
    """Where the result of ``run`` is (or will be) written: ``results/runs/RUN_ID.json``."""
    return results / "runs" / f"{run.run_id}.json"


def finished_result(results: Path, run: Run, config: StudyConfig) -> dict | None:
    """The stored result of ``run``, or None when it has not finished.  `StudyDataError` when the
    stored run was made with another configuration or its file is unreadable."""
    path = run_path(results, run)
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StudyDataError(f"{path}: unreadable run result ({exc}); delete it to run it again") from None
    if stored.get("seed_scheme") != SEED_SCHEME:
        old = stored.get("seed_scheme", 1)
        why = {1: "one seed shared by every fold of a repeat, so the folds were not independent blocks",
               2: "augmentation drawn per slice through MONAI transforms, now per batch"}.get(old, "another version")
        raise StudyDataError(f"{path}: this run was made with seed scheme {old} ({why}); this version uses scheme "
                             f"{SEED_SCHEME} and will not mix the two in one results folder: use another --results "
                             f"folder")
    if stored.get("fingerprint") != fingerprint(run_config(run, config)):
        raise StudyDataError(f"{path}: this run was made with a different study configuration; use another --results "
                         f"folder, or delete the file to run it again")
    return stored


def read_results(results: Path) -> list[dict]:
    """Every run JSON under ``results/runs`` (sorted by run id)."""
    out = []
    for path in sorted((results / "runs").glob("*.json")):
        try:
            out.append(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise StudyDataError(f"{path}: unreadable run result ({exc})") from None
    return out


def cases_table(records: list[dict]) -> str:
    """The tidy CSV text (`CASE_COLUMNS`) of run records: one row per (run, test case, class).

    Empty dice/hd95 = not defined (NaN); "inf" = an HD95 of a missed structure."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CASE_COLUMNS)
    for record in records:
        run = record["config"]["run"]
        for row in record["cases"]:
            values = [from_json_number(row.get(column)) for column in SCORE_COLUMNS]
            in_reference = "" if "in_reference" not in row else int(row["in_reference"])
            writer.writerow([run["dataset"], run["fold"], run["repeat"], run["arm"], record["source"],
                             run["n_synthetic"], run["n_real"], record["run_id"], row.get("test_set", IN_DISTRIBUTION),
                             row["case"], row["class"], in_reference,
                             *["" if math.isnan(v) else repr(v) for v in values]])
    return buffer.getvalue()


def rebuild_cases_csv(results: Path) -> Path:
    """Rewrite ``results/cases.csv`` from all run JSONs, under an fcntl lock (shards share it)."""
    with file_lock(results / ".cases.lock"):
        path = results / "cases.csv"
        atomic_write_text(path, cases_table(read_results(results)))
    return path


def mean_dice_table(records: list[dict], class_name: str = FOREGROUND) -> str:
    """Mean Dice of ``class_name`` per (dataset, n real, arm, k) over all test cases of the finished
    runs, as a Markdown table (runs, cases, mean, standard deviation over cases); n is "all" for
    whole folds."""
    cells: dict[tuple, list[float]] = {}
    runs: dict[tuple, set] = {}
    for record in records:
        run = record["config"]["run"]
        n = run["n_real_requested"]
        key = (run["dataset"], -1 if n is None else n, run["arm"], run["n_synthetic"])
        values = [from_json_number(r["dice"]) for r in record["cases"]
                  if r["class"] == class_name and r.get("test_set", IN_DISTRIBUTION) == IN_DISTRIBUTION]
        cells.setdefault(key, []).extend(v for v in values if not math.isnan(v))
        runs.setdefault(key, set()).add(record["run_id"])
    order = sorted(cells, key=lambda k: (k[0], k[1], k[2] != BASELINE_ARM, k[2], k[3]))
    lines = [f"| dataset | n | arm | k | runs | cases | mean {class_name} Dice | sd |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for key in order:
        values = np.array(cells[key])
        mean = f"{values.mean():.3f}" if values.size else "-"
        sd = f"{values.std(ddof=1):.3f}" if values.size > 1 else "-"
        n = "all" if key[1] < 0 else key[1]
        lines.append(f"| {key[0]} | {n} | {key[2]} | {key[3]} | {len(runs[key])} | {values.size} | {mean} | {sd} |")
    return "\n".join(lines)

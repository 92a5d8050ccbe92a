"""Running a study: one U-Net per grid run on the data `segmentation.study.study_data` prepares.

Each run trains on its real and synthetic training slices (`run_patients`, procedural arms made per
block by `procedural_block`), is tested on the held-out real patients (`score_test_patients`: per case
and class, and per test set for the instance metrics) and written as ``runs/RUN_ID.json`` of the
results folder (`segmentation.study.results`, which also says what the folder holds).  A run that
crashes writes no JSON, so re-running (any shard) redoes exactly the unfinished runs; a stored run
made with another configuration or seed scheme is an error, never silently reused.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Iterator, Sequence

import monai
import numpy as np
import torch
from torch.utils.data import ConcatDataset
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from procedural import ProceduralError
from segmentation.study.controls import NoiseSlices, ShuffledLabelSlices, shuffled_pairs
from segmentation.study.evaluation import FOREGROUND, evaluate_case, predict_probabilities, predict_volume
from segmentation.study.instances import TEST_SET_CASE, InstanceEvaluation
from segmentation.study.grid import SEED_SCHEME, Run, arm_entropy, arm_seed, shard
from segmentation.study.provenance import cache_fingerprints
from segmentation.study.results import (CASE_SCORES, RESULT_FORMAT, SCORE_COLUMNS, check_results_folder, finished_result,
                                        from_json_number, json_number, rebuild_cases_csv, run_config, run_path)
from segmentation.study.study_config import BASELINE_ARM, StudyConfig, StudyConfigError, fingerprint
from segmentation.study.study_data import (IN_DISTRIBUTION, RealData, StudyData, StudyDataError, SyntheticData, TestSet,
                                     instance_classes, load_synthetic, plan_runs, prepare_data, record_data)
from segmentation.study.unet import budget_rule, build_unet, run_steps, train_unet
from training.data import SliceCache, SliceDataset
from training.data.fsutils import atomic_write_json, file_lock
from training.sampling.procedural_sampling import synthesise_to_directory
from training.progress import LogLines
from training.sampling import resolve_device as resolve_sampling_device

CSV_REBUILD_SECONDS = 60.0  # during a shard, cases.csv is rebuilt at most this often (and at its end)


# ----------------------------------------------------------------------------------------------
# Which patients a run uses


@dataclass(frozen=True)
class RunPatients:
    """Case ids of one run: real training (subsampled), synthetic training, real validation, test, and
    the real patients a procedural arm is made from (its raw material: the run's training patients or
    the fold's, `ArmSpec.raw_material`; never validation or test patients)."""

    train_real: list[str]
    train_synthetic: list[str]
    val: list[str]
    test: list[str]
    raw_material: list[str]


def _ordered_subset(ids: list[str], count: int, seed: list[int]) -> list[str]:
    """The first ``count`` of a seeded permutation of sorted ``ids`` (sorted): nested for growing count."""
    order = np.random.default_rng(seed).permutation(len(ids))
    chosen = sorted(ids)
    return sorted(chosen[i] for i in order[:count])


def run_patients(run: Run, config: StudyConfig, data: StudyData) -> RunPatients:
    """Patients of ``run``, all drawn from its block seed (`segmentation.study.grid.block_seed`): the n
    real training patients are a nested subset per block (shared by the arms of the block), the k
    synthetic ones a nested subset per (block, arm), so no two blocks share a draw.  Noise patients
    are named ``noise_J``; a shuffled patient is ``IMAGE_CASE<labels:LABEL_CASE``.  val: the
    patients that select the model (`UNetTrainConfig.validation`: the fold's, the run's own, or none)."""
    real = data.real[run.dataset]
    fold = real.splits.fold(run.fold)
    train = list(fold.train)
    if run.n_real_requested is not None:
        train = _ordered_subset(train, run.n_real, [run.seed])
    synthetic: list[str] = []
    raw_material = train
    if run.arm != BASELINE_ARM:
        control = config.arm(run.arm).control
        if config.arm(run.arm).raw_material == "fold":
            raw_material = list(fold.train)
        if config.arm(run.arm).procedural is not None:
            synthetic = [f"SYN_{j:04d}" for j in range(run.n_synthetic)]  # the block's own, nested in k
        elif control == "noise":
            synthetic = [f"noise_{j:04d}" for j in range(run.n_synthetic)]
        elif control == "shuffled":
            synthetic = [f"{a}<labels:{b}" for a, b in shuffled_pairs(train, run.n_synthetic, arm_entropy(run))]
        else:
            source = data.synthetic[(run.dataset, run.arm)].dataset
            synthetic = _ordered_subset(source.case_ids, run.n_synthetic, arm_entropy(run))
    val = {"fold": list(fold.val), "own": list(train), "none": []}[config.train.validation]
    return RunPatients(train, synthetic, val, list(real.splits.test), raw_material)


def procedural_block(run: Run, config: StudyConfig, data: StudyData, patients: RunPatients, results: Path
                     ) -> tuple[SyntheticData, dict[str, list[str]]]:
    """The procedural patients of ``run``'s block, made on first use (under a lock: shards share
    them) from the block's raw material only (its real training patients, or the fold's), and checked
    to be made from nothing else; with the recorded real source patients of each synthetic one.
    Every k of the block reuses what the first of them made, read, checked and recorded (kept in
    ``data``)."""
    key = f"procedural/{run.arm}/{run.block_name}"
    if key in data.procedural_blocks:
        return data.procedural_blocks[key]
    arm, real = config.arm(run.arm), data.real[run.dataset]
    folder = results / "synthetic" / "procedural" / arm.name / run.block_name
    count = data.procedural_patients[(run.dataset, arm.name, run.n_real_requested)]
    with file_lock(folder.parent / f".{folder.name}.lock"):
        try:
            report = synthesise_to_directory(real.dataset, patients.raw_material, arm.procedural, arm.config, count,
                                             arm_seed(run), folder, progress=False)
        except (ProceduralError, ValueError) as exc:
            raise StudyDataError(f"arm {arm.name!r} ({arm.procedural} into {folder}): {exc}") from exc
    leaked = sorted({s for sources in report.sources.values() for s in sources} - set(patients.raw_material))
    if leaked:
        raise StudyDataError(f"{folder}: procedural patients were made from {leaked}, which are not this block's "
                             f"real training patients (validation or test patients must never reach a synthesiser); "
                             f"delete the folder to make it again")
    block = load_synthetic(arm, folder, real, count, results / "synthetic" / ".slice_cache")
    record_data(results, {key: cache_fingerprints(block.cache)}, data)
    data.procedural_blocks[key] = block, report.sources
    return data.procedural_blocks[key]


def synthetic_slices(run: Run, config: StudyConfig, data: StudyData, patients: RunPatients, results: Path
                     ) -> tuple[torch.utils.data.Dataset, dict[str, list[str]]]:
    """The training slices of the synthetic patients of ``run`` (a synthetic arm), and the real
    patients each synthetic one was made from where the study made them (procedural, shuffled)."""
    real = data.real[run.dataset]
    if config.arm(run.arm).procedural is not None:
        block, sources = procedural_block(run, config, data, patients, results)
        used = {case: sources[case] for case in patients.train_synthetic}
        return SliceDataset(block.cache, _case_rows(block.cache, patients.train_synthetic)), used
    control = config.arm(run.arm).control
    if control == "noise":
        per_patient = max(1, round(len(real.cache) / len(real.dataset.case_ids)))
        return NoiseSlices(run.n_synthetic, per_patient, len(real.dataset.modalities),
                           real.spec.preprocess.resolution, len(real.dataset.label_values),
                           seed=arm_seed(run)), {}
    if control == "shuffled":
        pairs = [tuple(name.split("<labels:")) for name in patients.train_synthetic]
        return ShuffledLabelSlices(real.cache, pairs), {name: list(pair) for name, pair in  # type: ignore[arg-type]
                                                        zip(patients.train_synthetic, pairs)}
    cache = data.synthetic[(run.dataset, run.arm)].cache
    return SliceDataset(cache, _case_rows(cache, patients.train_synthetic)), {}


def _case_rows(cache: SliceCache, case_ids: list[str]) -> np.ndarray:
    """All slice rows int64 [n] of ``case_ids`` (every slice: the U-Net is tested on whole volumes)."""
    return np.concatenate([cache.rows_of(c) for c in case_ids]) if case_ids else np.zeros(0, dtype=np.int64)


def _run_fingerprints(run: Run, config: StudyConfig, data: StudyData, patients: RunPatients) -> dict:
    """The content fingerprints of the real patients a run used and of its synthetic patients where
    they come from files (folders, GAN samples, oracle, procedural blocks)."""
    real = data.fingerprints.get(f"real/{run.dataset}", {})
    out = {"real": {c: real[c] for c in (*patients.train_real, *patients.val, *patients.test) if c in real}}
    if run.arm != BASELINE_ARM:
        arm = config.arm(run.arm)
        key = (f"procedural/{arm.name}/{run.block_name}" if arm.procedural is not None
               else f"synthetic/{run.dataset}/{arm.name}")
        synthetic = data.fingerprints.get(key, {})
        out["synthetic"] = {c: synthetic[c] for c in patients.train_synthetic if c in synthetic}
    return out


# ----------------------------------------------------------------------------------------------
# One run


class CaseVolumes(Sequence):
    """Cases of a slice cache read on access: item i -> (images float32 [M, R, R, Z] in [-1, 1],
    labels uint8 [R, R, Z]), so validation volumes are never all in memory at once."""

    def __init__(self, cache: SliceCache, case_ids: list[str]):
        self.cache, self.case_ids = cache, list(case_ids)

    def __len__(self) -> int:
        return len(self.case_ids)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[override]
        return self.cache.volume(self.case_ids[index])


def _source(run: Run, config: StudyConfig) -> str:
    """The ``source`` column: "real" for the baseline, else the arm's description."""
    return "real" if run.arm == BASELINE_ARM else config.arm(run.arm).source


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed torch and switch on deterministic algorithms (warn-only) for the block, then restore."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


def execute_run(run: Run, config: StudyConfig, data: StudyData, results: Path, device: torch.device,
                progress: bool = False) -> dict:
    """Train and test one run; returns its result record (not yet written)."""
    started = time.time()
    real = data.real[run.dataset]
    patients = run_patients(run, config, data)
    parts = [SliceDataset(real.cache, _case_rows(real.cache, patients.train_real))]
    synthetic_sources: dict[str, list[str]] = {}
    if patients.train_synthetic:
        synthetic, synthetic_sources = synthetic_slices(run, config, data, patients, results)
        parts.append(synthetic)
    slices = ConcatDataset(parts)
    steps = run_steps(config.train, len(slices))
    val_volumes = CaseVolumes(real.cache, patients.val)
    tensorboard = results / "tensorboard" / run.run_id
    shutil.rmtree(tensorboard, ignore_errors=True)  # curves of a crashed attempt
    with deterministic(run.seed), SummaryWriter(str(tensorboard)) as writer:
        model = build_unet(config.unet, len(real.dataset.modalities), len(real.dataset.label_values)).to(device)
        outcome = train_unet(model, slices, val_volumes, config.train, run.seed, device,
                             log=lambda tag, value, step: writer.add_scalar(tag, value, step), progress=progress,
                             steps=steps, real_count=len(parts[0]))
        model.load_state_dict(outcome.best_state)
        cases = score_test_patients(model, real, patients.test, config, device)
        for test_set in data.test_sets[run.dataset]:
            cases += score_test_patients(model, test_set, test_set.dataset.case_ids, config, device,
                                         test_set.spec.name, test_set.label_map)
        foreground = [from_json_number(c["dice"]) for c in cases
                      if c["class"] == FOREGROUND and c["test_set"] == IN_DISTRIBUTION]
        writer.add_scalar("test/foreground_dice", float(np.nanmean(foreground)), outcome.best_iteration)
    training = {f.name: getattr(outcome, f.name) for f in dataclasses.fields(outcome) if f.name != "best_state"}
    training["best_val_dice"] = json_number(training["best_val_dice"])
    stored_config = run_config(run, config)
    return {
        "format": RESULT_FORMAT, "run_id": run.run_id, "study": config.name,
        "fingerprint": fingerprint(stored_config), "config": stored_config,
        "source": _source(run, config), "budget_rule": budget_rule(config.train), "steps": steps,
        "seed": run.seed, "seed_scheme": SEED_SCHEME,
        "patients": dataclasses.asdict(patients), "synthetic_sources": synthetic_sources,
        "data_fingerprints": _run_fingerprints(run, config, data, patients),
        "slices": {"train_real": len(parts[0]), "train_synthetic": len(slices) - len(parts[0])},
        "training": training, "cases": cases,
        "wall_seconds": round(time.time() - started, 3), "device": str(device),
        "software": {"torch": torch.__version__, "monai": monai.__version__},
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def score_test_patients(model: torch.nn.Module, real: RealData | TestSet, test_ids: list[str], config: StudyConfig,
                        device: torch.device, test_set: str = IN_DISTRIBUTION,
                        label_map: np.ndarray | None = None) -> list[dict]:
    """Scores of every test patient: rows {case, class, in_reference, and each of `SCORE_COLUMNS`
    (JSON number, null or "inf")}.  A class the patient's reference lacks has in_reference false
    and, with ``empty_class: exclude``, no scores but false_positive (null): "nothing to find" says
    nothing about segmentation, only whether something was found anyway.  An out-of-distribution
    ``test_set`` names its rows; ``label_map`` takes its label indices to the model's."""
    rows = []
    names = real.dataset.label_names if label_map is None else [real.dataset.label_names[i]
                                                                for i in np.argsort(label_map)]
    classes = instance_classes(config, real.dataset) if "map" in config.metrics else []
    objects = InstanceEvaluation(classes, [names.index(c) for c in classes]) if classes else None
    for case_id in test_ids:
        images, reference = real.cache.volume(case_id)
        if label_map is not None:
            reference = label_map[reference].astype(np.uint8)
        if objects is not None:
            probabilities = predict_probabilities(model, images, config.train.batch_size, device)
            prediction = probabilities.argmax(axis=0).astype(np.uint8)
            objects.add_case(case_id, probabilities, reference)
        else:
            prediction = predict_volume(model, images, config.train.batch_size, device)
        spacing = real.cache.case_info(case_id).slice_spacing
        diagonal = float(np.linalg.norm(np.array(reference.shape) * np.array(spacing)))
        present = {name: bool((reference == index).any()) for index, name in enumerate(names)}
        present[FOREGROUND] = bool((reference > 0).any())
        tolerances = (config.nsd_tolerance_mm or {}) if "nsd" in config.metrics else None
        for score in evaluate_case(prediction, reference, names, spacing,
                                   hd95="hd95" in config.metrics, nsd_tolerance_mm=tolerances,
                                   detection="detection" in config.metrics):
            scored = present[score.name] or config.empty_class == "score"
            row = {"test_set": test_set, "case": case_id, "class": score.name, "in_reference": present[score.name],
                   **dict.fromkeys(SCORE_COLUMNS)}
            for column in CASE_SCORES:
                value = getattr(score, column)
                if column == "hd95" and math.isinf(value):  # a missed structure: see hd95_missed
                    value = diagonal if config.hd95_missed == "diagonal" else math.nan
                row[column] = json_number(value if scored or column == "false_positive" else math.nan)
            rows.append(row)
    if objects is not None:
        rows += _object_rows(objects, rows, test_set)
    return rows


def _object_rows(objects: InstanceEvaluation, rows: list[dict], test_set: str) -> list[dict]:
    """Fill the per-case object scores into ``rows`` and return the test-set rows (ap50, map per
    instance class and "foreground", case `TEST_SET_CASE`)."""
    per_class, per_case = objects.scores()
    for row in rows:
        if row["class"] in objects.class_names:
            for column, value in per_case[row["case"]][row["class"]].items():
                row[column] = json_number(value)
    return [{"test_set": test_set, "case": TEST_SET_CASE, "class": name, "in_reference": not math.isnan(scores["map"]),
             **dict.fromkeys(SCORE_COLUMNS), **{column: json_number(value) for column, value in scores.items()}}
            for name, scores in per_class.items()]


# ----------------------------------------------------------------------------------------------
# The study


@dataclass
class StudySummary:
    """What `run_study` did: the shard's runs, how many were run now and skipped, the results folder."""

    results: Path
    runs: list[Run]
    ran: list[str]
    skipped: list[str]
    seconds: float
    cases_csv: Path


def resolve_device(device: str) -> torch.device:
    """`training.sampling.resolve_device` with the study's error type (`StudyConfigError` for an
    unknown name, or CUDA without a GPU)."""
    try:
        return resolve_sampling_device(device)
    except ValueError as exc:
        raise StudyConfigError(str(exc)) from None


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Use ``threads`` CPU threads for torch inside the block (None: leave torch's choice)."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_study(config: StudyConfig, results: str | Path, shard_index: int = 0, shard_count: int = 1,
              device: str = "auto", progress: bool = True, threads: int | None = None,
              accept_changed_data: bool = False) -> StudySummary:
    """Run this shard's part of the study grid into ``results``; finished runs are skipped.

    Each finished run is written to ``results/runs/RUN_ID.json`` (atomic); ``cases.csv`` is rebuilt
    from all run files at most every `CSV_REBUILD_SECONDS` and when the shard ends.  threads: torch CPU threads (None: torch's default; 1 is fastest for
    small U-Nets on a busy machine).  Returns a `StudySummary`.
    """
    with torch_threads(threads):
        return _run_study(config, Path(results), shard_index, shard_count, device, progress, accept_changed_data)


def _run_worker(config: StudyConfig, results: Path, shard_index: int, shard_count: int, device: str,
                threads: int | None, accept_changed_data: bool) -> tuple[list[str], list[str]]:
    """One worker process of `run_study_parallel`: its shard, quietly; (ran, skipped) run ids."""
    summary = run_study(config, results, shard_index, shard_count, device, progress=False, threads=threads,
                        accept_changed_data=accept_changed_data)
    return summary.ran, summary.skipped


def run_study_parallel(config: StudyConfig, results: str | Path, jobs: int, shard_index: int = 0,
                       shard_count: int = 1, device: str = "auto", threads: int | None = 1,
                       accept_changed_data: bool = False) -> StudySummary:
    """`run_study` in ``jobs`` worker processes: shard i/n is split into the sub-shards i + n w of
    n * jobs (w < jobs), so the runs, their seeds and their results are exactly those of one process;
    only the order of writing differs.  Each worker uses ``threads`` torch threads."""
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    started = time.time()
    results = Path(results)
    check_results_folder(results)
    results.mkdir(parents=True, exist_ok=True)
    ran: list[str] = []
    skipped: list[str] = []
    context = multiprocessing.get_context("spawn")  # a forked torch can deadlock in its thread pools
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = [pool.submit(_run_worker, config, results, shard_index + shard_count * w, shard_count * jobs,
                               device, threads, accept_changed_data) for w in range(jobs)]
        for future in futures:
            done, already = future.result()
            ran += done
            skipped += already
    grid = plan_runs(config, results)[0]
    return StudySummary(results, shard(grid, shard_index, shard_count), ran, skipped, time.time() - started,
                        rebuild_cases_csv(results))


def _run_pending(config: StudyConfig, grid: list[Run], pending: list[Run], shard_size: int, results: Path,
                 device: torch.device, progress: bool, ran: list[str], accept_changed_data: bool) -> None:
    """Prepare the data, then train, test and write each pending run (its id appended to ``ran``)."""
    data = prepare_data(config, grid, results, str(device), progress, accept_changed_data)
    last_rebuild = time.monotonic()
    lines = LogLines(f"study {config.name}", shard_size, "run", shard_size - len(pending), progress)
    with tqdm(total=shard_size, initial=shard_size - len(pending), desc=f"study {config.name}", unit="run",
              disable=None if progress else True) as bar:
        for run in pending:
            bar.set_postfix_str(run.run_id)
            record = execute_run(run, config, data, results, device, progress)
            atomic_write_json(run_path(results, run), record)
            ran.append(run.run_id)
            bar.update(1)
            lines.step(f", {run.run_id} done in {record['wall_seconds']:.1f} s")
            if time.monotonic() - last_rebuild >= CSV_REBUILD_SECONDS:  # reading every JSON costs
                rebuild_cases_csv(results)
                last_rebuild = time.monotonic()


def _run_study(config: StudyConfig, results: Path, shard_index: int, shard_count: int, device: str,
               progress: bool, accept_changed_data: bool) -> StudySummary:
    started = time.time()
    check_results_folder(results)
    results.mkdir(parents=True, exist_ok=True)
    grid = plan_runs(config, results)[0]
    runs = shard(grid, shard_index, shard_count)
    pending = [run for run in runs if finished_result(results, run, config) is None]
    atomic_write_json(results / "study.json", config.to_dict())  # after the check that it is the same study
    skipped = [run.run_id for run in runs if run not in pending]
    torch_device = resolve_device(device)
    ran: list[str] = []
    try:
        if pending:
            _run_pending(config, grid, pending, len(runs), results, torch_device, progress, ran, accept_changed_data)
    finally:  # also after a crash: the table shows every run that did finish
        csv_path = rebuild_cases_csv(results)
    return StudySummary(results, runs, ran, skipped, time.time() - started, csv_path)

"""The micro-study end to end on phantom patients: real-only baseline + a phantom synthetic arm + a
useless noise arm, 2 k values, 2 folds; determinism, shards, re-runs, crashes, bad synthetic data."""
import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segmentation.study import results as study_results
from segmentation.study import runner, study_data
from segmentation.study.controls import oracle_seed
from segmentation.study.grid import SEED_SCHEME, block_seed
from segmentation.study.results import CASE_COLUMNS
from segmentation.study.runner import run_study
from segmentation.study.study_data import StudyDataError, prepare_data
from segmentation.study.study_config import StudyConfigError, load_study_config
from training.data import PHANTOM_LABELS, PHANTOM_MODALITIES, write_phantom_dataset
from training.data.fsutils import atomic_write_json
from training.data.nifti import write_nifti

from tiny import TINY_GAN_ARGS

MICRO = Path(__file__).resolve().parents[1] / "configs" / "study" / "micro.yaml"


def write_noise_dataset(out: Path, n_patients: int, shape=(32, 32, 8), seed: int = 0,
                        modalities=PHANTOM_MODALITIES) -> Path:
    """A deliberately useless synthetic source in nnU-Net v2 layout: uniform noise images and
    independent random label maps with the phantom channels and labels."""
    rng = np.random.default_rng(seed)
    affine = np.diag([6.0, 6.0, 18.0, 1.0])
    for i in range(n_patients):
        for c in range(len(modalities)):
            write_nifti(out / "imagesTr" / f"noise_{i:03d}_{c:04d}.nii.gz",
                        rng.uniform(0, 1000, size=shape).astype(np.float32), affine)
        write_nifti(out / "labelsTr" / f"noise_{i:03d}.nii.gz",
                    rng.integers(0, len(PHANTOM_LABELS), size=shape).astype(np.uint8), affine)
    atomic_write_json(out / "dataset.json", {
        "name": "Noise", "channel_names": {str(i): m for i, m in enumerate(modalities)},
        "labels": {n: i for i, n in enumerate(PHANTOM_LABELS)}, "numTraining": n_patients,
        "file_ending": ".nii.gz"})
    return out


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    other = write_phantom_dataset(root / "other", n_patients=4, shape=(32, 32, 8), seed=7, layout="nnunet")
    noise = write_noise_dataset(root / "noise", n_patients=4)
    return {"other": other, "noise": noise}


def micro_config(sources, *overrides):
    arms = json.dumps([{"name": name, "folder": str(folder)} for name, folder in sources.items()])
    return load_study_config(MICRO, [f"arms={arms}", *overrides])


@pytest.fixture(scope="module")
def micro_study(sources, tmp_path_factory):
    results = tmp_path_factory.mktemp("micro")
    config = micro_config(sources)
    summary = run_study(config, results, device="cpu", progress=False, threads=1)
    return config, results, summary


def read_cases(results: Path) -> list[dict]:
    with open(results / "cases.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def dice_by_key(results: Path) -> dict:
    return {(r["run_id"], r["case"], r["class"]): r["dice"] for r in read_cases(results)}


def test_micro_study_files_parse(micro_study):
    config, results, summary = micro_study
    # 2 folds x (baseline + 2 arms x k {2, "1x" = 3}) = 10 runs
    assert len(summary.runs) == 10 and len(summary.ran) == 10 and not summary.skipped
    files = sorted(p.stem for p in (results / "runs").glob("*.json"))
    assert files == sorted(r.run_id for r in summary.runs)
    assert not list((results / "runs").glob(".*"))  # no temporary files left
    record = json.loads((results / "runs" / "phantom-f1-r0-noise-k3-nall.json").read_text())
    assert record["config"]["run"]["n_synthetic"] == 3 and record["source"].startswith("folder:")
    assert len(record["patients"]["train_synthetic"]) == 3
    assert set(record["patients"]["test"]).isdisjoint(record["patients"]["train_real"] + record["patients"]["val"])
    assert record["slices"]["train_synthetic"] == 3 * 8
    assert "budget_rule" in record and record["training"]["iterations_run"] == config.train.iterations
    assert [c["iteration"] for c in record["training"]["curve"]] == [6, 12]
    assert record["wall_seconds"] > 0 and record["seed"] == block_seed(0, "phantom", 1, 0)
    assert record["seed_scheme"] == SEED_SCHEME
    assert (results / "tensorboard" / record["run_id"]).is_dir()

    rows = read_cases(results)
    assert tuple(rows[0]) == CASE_COLUMNS
    n_test = len(record["patients"]["test"])
    assert len(rows) == 10 * n_test * len(PHANTOM_LABELS)  # (L - 1) classes + foreground per case
    assert {r["arm"] for r in rows} == {"real", "other", "noise"}
    assert {r["n_synthetic"] for r in rows if r["arm"] == "noise"} == {"2", "3"}
    foreground = [float(r["dice"]) for r in rows if r["class"] == "foreground"]
    assert all(0.0 <= d <= 1.0 for d in foreground)
    assert all(r["hd95"] == "" or float(r["hd95"]) >= 0 for r in rows)


def test_baseline_learns_something(micro_study):
    _, results, _ = micro_study
    dice = [float(r["dice"]) for r in read_cases(results) if r["arm"] == "real" and r["class"] == "foreground"]
    assert np.mean(dice) > 0.3  # the head is most of the foreground: a few steps already find it


def test_rerun_skips_finished_runs(micro_study):
    config, results, summary = micro_study
    before = {p: p.stat().st_mtime_ns for p in (results / "runs").glob("*.json")}
    again = run_study(config, results, device="cpu", progress=False, threads=1)
    assert again.ran == [] and sorted(again.skipped) == sorted(r.run_id for r in summary.runs)
    assert {p: p.stat().st_mtime_ns for p in (results / "runs").glob("*.json")} == before


def test_changed_config_is_not_silently_reused(micro_study, sources):
    _, results, _ = micro_study
    with pytest.raises(StudyDataError, match="different study configuration"):
        run_study(micro_config(sources, "train.learning_rate=0.02"), results, device="cpu", progress=False, threads=1)


@pytest.mark.parametrize("override", ["splits.seed=7", "splits.test_fraction=0.5", "splits.n_folds=3"])
def test_changed_splits_in_a_used_results_folder_are_refused(micro_study, sources, override, capsys):
    from segmentation.study.cli_study import main

    _, results, _ = micro_study
    with pytest.raises(StudyDataError, match="stored splits differ from those of the config"):
        study_data.plan_runs(micro_config(sources, override), results)
    arms = json.dumps([{"name": name, "folder": str(folder)} for name, folder in sources.items()])
    with pytest.raises(SystemExit) as exit_info:  # also a dry run: a clear error, no traceback
        main([str(MICRO), "--results", str(results), "--dry-run", "--set", f"arms={arms}", "--set", override])
    assert exit_info.value.code == 2 and "stored splits differ" in capsys.readouterr().err


def test_splits_without_test_patients_are_refused(sources, tmp_path):
    config = micro_config(sources, "splits.test_fraction=0.05")  # 0.05 x 8 patients rounds to none
    with pytest.raises(StudyDataError, match=r"8 usable patients; this design needs at least 11 \(a 0.05 share as test patients"):
        run_study(config, tmp_path, device="cpu", progress=False, threads=1)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_a_dataset_below_the_design_minimum_gets_one_message_up_front(sources, tmp_path, capsys):
    import yaml

    from segmentation.study.cli_study import main

    small = write_phantom_dataset(tmp_path / "two", n_patients=2, shape=(16, 16, 4), seed=5)
    config = dict(yaml.safe_load(MICRO.read_text()))
    with pytest.raises(SystemExit) as exit_info:
        main([str(MICRO), "--results", str(tmp_path / "r"), "--dry-run", "--set",
              f"datasets=[{{name: two, path: {small}}}]", "--set", "n_real=[2]"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("error") == 1, err
    folds = config.get("splits", {}).get("n_folds", 5)
    assert "dataset 'two': 2 usable patients; this design needs at least" in err and f"then {folds} folds" in err
    assert "2 training patients" in err and "lower splits.n_folds" in err


def test_shards_reproduce_the_unsharded_study(micro_study, sources, tmp_path):
    config, results, summary = micro_study
    shards = [run_study(config, tmp_path, i, 2, device="cpu", progress=False, threads=1) for i in range(2)]
    ran = [run_id for s in shards for run_id in s.ran]
    assert sorted(ran) == sorted(r.run_id for r in summary.runs) and len(ran) == len(set(ran))
    # Same seeds in another process order and folder: identical Dice for every case and class.
    assert dice_by_key(tmp_path) == dice_by_key(results)


def test_another_seed_gives_other_results(micro_study, sources, tmp_path):
    config, results, _ = micro_study
    other = micro_config(sources, "seed=1", "arms=[]", "splits.folds=[0]")
    run_study(other, tmp_path, device="cpu", progress=False, threads=1)
    new = {(r["case"], r["class"]): r["dice"] for r in read_cases(tmp_path)}
    old = {(r["case"], r["class"]): r["dice"] for r in read_cases(results) if r["run_id"] == "phantom-f0-r0-real-k0-nall"}
    assert new.keys() == old.keys() and new != old


def test_crashed_run_leaves_no_result_and_is_redone(sources, tmp_path, monkeypatch):
    config = micro_config(sources, "arms=[]", "train.iterations=2", "train.val_every=2")
    score = runner.score_test_patients
    calls = []

    def crash_on_second_run(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash during testing")
        return score(*args, **kwargs)

    monkeypatch.setattr(runner, "score_test_patients", crash_on_second_run)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_study(config, tmp_path, device="cpu", progress=False, threads=1)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["phantom-f0-r0-real-k0-nall.json"]
    assert {r["run_id"] for r in read_cases(tmp_path)} == {"phantom-f0-r0-real-k0-nall"}  # table still rebuilt
    monkeypatch.undo()
    summary = run_study(config, tmp_path, device="cpu", progress=False, threads=1)
    assert summary.ran == ["phantom-f1-r0-real-k0-nall"] and summary.skipped == ["phantom-f0-r0-real-k0-nall"]
    assert len(read_cases(tmp_path)) == 2 * 2 * len(PHANTOM_LABELS)


def test_synthetic_folder_with_other_channels_is_refused(sources, tmp_path):
    bad = write_noise_dataset(tmp_path / "wrong_channels", n_patients=1, modalities=("A", "B", "C", "D"))
    config = micro_config({"wrong": bad})
    runs = study_data.plan_runs(config, tmp_path)[0]
    with pytest.raises(StudyDataError, match=r"wrong_channels: the synthetic patients have channels \['A', 'B', 'C', 'D'\] instead of"):
        prepare_data(config, runs, tmp_path)


def test_synthetic_folder_with_other_label_names_is_refused(sources, tmp_path):
    bad = write_noise_dataset(tmp_path / "renamed", n_patients=4)
    meta = json.loads((bad / "dataset.json").read_text())
    meta["labels"] = {("tumour" if name == "core" else name): value for name, value in meta["labels"].items()}
    atomic_write_json(bad / "dataset.json", meta)
    config = micro_config({"renamed": bad})
    runs = study_data.plan_runs(config, tmp_path)[0]
    with pytest.raises(StudyDataError, match=r"renamed: the synthetic patients have label names \[.*'tumour'\] instead of"):
        prepare_data(config, runs, tmp_path)


def test_too_few_synthetic_patients_is_refused(sources, tmp_path):
    config = micro_config({"other": sources["other"]}, 'k=["2x"]')  # needs 6, the folder holds 4
    runs = study_data.plan_runs(config, tmp_path)[0]
    with pytest.raises(StudyDataError, match="needs 6 synthetic patients, the folder holds 4"):
        prepare_data(config, runs, tmp_path)


def test_gan_arm_is_sampled_once_into_the_results_folder(sources, tmp_path):
    from test_sampling import save_run  # a checkpoint of an untrained tiny generator (16 px)

    gan = save_run(tmp_path / "gan" / "baseline", "baseline")
    config = micro_config({}, f"arms=[{{name: gan, gan: {gan}, psi: 0.7}}]", "k=[2]", "splits.folds=[0]",
                          "baseline=false", "train.iterations=2", "train.val_every=2")
    summary = run_study(config, tmp_path / "results", device="cpu", progress=False, threads=1)
    assert summary.ran == ["phantom-f0-r0-gan-k2-nall"]
    folder = tmp_path / "results" / "synthetic" / "gan"
    synthesis = json.loads((folder / "synthesis.json").read_text())
    assert synthesis["sessions"][-1]["settings"]["truncation_psi"] == 0.7
    assert len(list((folder / "labelsTr").glob("*.nii.gz"))) == 2
    record = json.loads((tmp_path / "results" / "runs" / f"{summary.ran[0]}.json").read_text())
    assert record["source"].startswith("gan:") and "@psi=0.7" in record["source"]
    assert len(record["patients"]["train_synthetic"]) == 2


def test_cli_runs_a_study_with_synthetic_folders_and_prints_the_dice_table(sources, tmp_path, capsys):
    from segmentation.study.cli_study import main

    status = main([str(MICRO), "--results", str(tmp_path), "--device", "cpu", "--quiet", "--threads", "1",
                   "--synthetic", f"other={sources['other']}", "--set", "k=[2]", "--set", "splits.folds=[1]",
                   "--set", "train.iterations=2", "--set", "train.val_every=2", "--allow-weak-design"])
    assert status == 0
    captured = capsys.readouterr()
    assert "| phantom | all | real | 0 | 1 |" in captured.out and "| phantom | all | other | 2 | 1 |" in captured.out
    assert "2 runs finished, 0 already done" in captured.err
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["phantom-f1-r0-other-k2-nall.json",
                                                                     "phantom-f1-r0-real-k0-nall.json"]


def test_cases_table_writes_undefined_and_infinite_distances_readably():
    from segmentation.study.results import cases_table

    run = {"dataset": "d", "fold": 0, "repeat": 0, "arm": "real", "n_synthetic": 0, "n_real": 3}
    record = {"run_id": "d-f0-r0-real-k0-nall", "source": "real", "config": {"run": run},
              "cases": [{"case": "c1", "class": "core", "dice": 0.0, "hd95": None},
                        {"case": "c1", "class": "oedema", "dice": 0.0, "hd95": "inf"},
                        {"case": "c1", "class": "foreground", "dice": 0.5, "hd95": 3.25}]}
    rows = list(csv.DictReader(cases_table([record]).splitlines()))
    assert [(r["class"], r["dice"], r["hd95"]) for r in rows] == [("core", "0.0", ""), ("oedema", "0.0", "inf"),
                                                                 ("foreground", "0.5", "3.25")]
    assert float(rows[1]["hd95"]) == float("inf") and rows[0]["n_real"] == "3"


def test_unusable_gan_run_is_named(tmp_path):
    config = micro_config({}, f"arms=[{{name: gan, gan: {tmp_path / 'no-such-run'}}}]", "k=[2]")
    with pytest.raises(StudyDataError, match="arm 'gan' \\(sampling into"):
        run_study(config, tmp_path / "results", device="cpu", progress=False, threads=1)


def test_useless_source_is_reported_and_every_run_has_its_curves(micro_study):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from segmentation.study.results import mean_dice_table, read_results

    config, results, summary = micro_study
    table = mean_dice_table(read_results(results))
    for arm, k in (("real", 0), ("other", 2), ("other", 3), ("noise", 2), ("noise", 3)):
        assert f"| phantom | all | {arm} | {k} | 2 | " in table, (arm, k, table)  # 2 folds each
    for run in summary.runs:
        events = EventAccumulator(str(results / "tensorboard" / run.run_id)).Reload()
        assert {"train/loss", "val/mean_class_dice", "test/foreground_dice"} <= set(events.Tags()["scalars"])
        assert len(events.Scalars("train/loss")) == config.train.iterations


def control_config(*overrides):
    arms = json.dumps([{"name": "oracle", "control": "oracle"}, {"name": "noise", "control": "noise"},
                       {"name": "shuffled", "control": "shuffled"}])
    return load_study_config(MICRO, [f"arms={arms}", "k=[3]", "repeats=2", "train.iterations=4",
                                     "train.val_every=4", "train.validation=none", *overrides])


@pytest.fixture(scope="module")
def control_study(tmp_path_factory):
    results = tmp_path_factory.mktemp("controls")
    config = control_config()
    summary = run_study(config, results, device="cpu", progress=False, threads=1)
    records = {r["run_id"]: r for r in study_results.read_results(results)}
    return config, results, summary, records


def test_blocks_have_their_own_seeds_and_draws_and_arms_of_a_block_share_them(control_study):
    _, _, summary, records = control_study
    by_block: dict = {}
    for record in records.values():
        run = record["config"]["run"]
        by_block.setdefault((run["fold"], run["repeat"]), []).append(record)
    assert len(by_block) == 4  # 2 folds x 2 repeats
    seeds = {block: {r["seed"] for r in rs} for block, rs in by_block.items()}
    assert all(len(s) == 1 for s in seeds.values()) and len({s.pop() for s in seeds.values()}) == 4
    oracle = {block: tuple(r["patients"]["train_synthetic"]) for block, rs in by_block.items() for r in rs
              if r["config"]["run"]["arm"] == "oracle"}
    assert len(set(oracle.values())) == 4  # no two blocks draw the same oracle patients


def test_control_arms_use_the_run_s_training_patients_only(control_study):
    _, results, _, records = control_study
    for record in records.values():
        patients, arm = record["patients"], record["config"]["run"]["arm"]
        assert record["source"] == ("real" if arm == "real" else f"control:{arm}")
        assert patients["val"] == [] and record["training"]["iterations_run"] == 4
        if arm == "shuffled":
            pairs = [name.split("<labels:") for name in patients["train_synthetic"]]
            assert len(pairs) == 3 and all(a != b for a, b in pairs)
            assert {c for pair in pairs for c in pair} <= set(patients["train_real"])
        if arm == "noise":
            assert patients["train_synthetic"] == ["noise_0000", "noise_0001", "noise_0002"]
        if arm != "real":
            assert record["slices"]["train_synthetic"] == 3 * 8
    real = load_dataset_ids(records)
    oracle_ids = {c for r in records.values() if r["config"]["run"]["arm"] == "oracle"
                  for c in r["patients"]["train_synthetic"]}
    assert oracle_ids and all(c.startswith("phantom_") for c in oracle_ids)
    assert oracle_seed(0) != 0 and real  # a population the dataset (seed 0) does not use


def load_dataset_ids(records):
    return {c for r in records.values() for c in r["patients"]["train_real"] + r["patients"]["test"]}


def test_shuffled_control_pairs_images_with_another_patient_s_labels(control_study):
    from segmentation.study.controls import ShuffledLabelSlices, shuffled_pairs

    config, results, _, _ = control_study
    data = prepare_data(config, study_data.plan_runs(config, results)[0], results)
    real = data.real["phantom"]
    ids = list(real.splits.fold(0).train)
    pairs = shuffled_pairs(ids, 2 * len(ids), seed=[1, 2])
    assert all(a != b for a, b in pairs) and len(set(pairs)) == len(pairs)
    slices = ShuffledLabelSlices(real.cache, pairs[:1])
    image_case, label_case = pairs[0]
    images, _ = real.cache.volume(image_case)
    _, labels = real.cache.volume(label_case)
    image, label, _ = slices[3]
    np.testing.assert_array_equal(image.numpy(), images[..., 3])
    np.testing.assert_array_equal(label.numpy(), labels[..., 3])


def test_empty_classes_are_excluded_and_marked(control_study):
    _, results, _, _ = control_study
    rows = read_cases(results)
    absent = [r for r in rows if r["in_reference"] == "0"]
    assert all(r["dice"] == "" and r["hd95"] == "" for r in absent)
    assert all(r["dice"] != "" for r in rows if r["in_reference"] == "1")


def test_results_of_the_old_seed_scheme_are_refused_not_mixed(micro_study, sources, tmp_path):
    config, results, _ = micro_study
    old = json.loads((results / "runs" / "phantom-f0-r0-real-k0-nall.json").read_text())
    del old["seed_scheme"]  # a run written before block seeds: one seed for every fold of a repeat
    (tmp_path / "runs").mkdir()
    atomic_write_json(tmp_path / "runs" / "phantom-f0-r0-real-k0-nall.json", old)
    (tmp_path / "study.json").write_text((results / "study.json").read_text())
    with pytest.raises(StudyDataError, match="seed scheme 1 .*not mix the two in one results folder"):
        run_study(config, tmp_path, device="cpu", progress=False, threads=1)


def test_a_procedural_arm_is_made_per_block_from_the_block_s_training_patients_only(tmp_path):
    lesions = {"name": "lesions", "procedural": "lesion-insertion",
               "config": str(Path(__file__).resolve().parents[1] / "configs" / "procedural" / "phantom-lesions.yaml")}
    config = load_study_config(MICRO, [f"arms={json.dumps([lesions])}", "k=[2, 3]", "train.iterations=2",
                                       "train.val_every=2", "n_real=[3]", "repeats=2"])
    summary = run_study(config, tmp_path, device="cpu", progress=False, threads=1)
    assert len(summary.ran) == 2 * 2 * 3
    for record in study_results.read_results(tmp_path):
        patients = record["patients"]
        if record["config"]["run"]["arm"] != "lesions":
            continue
        assert record["source"].startswith("procedural:lesion-insertion@")
        sources = {s for ids in record["synthetic_sources"].values() for s in ids}
        assert set(record["synthetic_sources"]) == set(patients["train_synthetic"])
        assert sources and sources <= set(patients["train_real"])
        assert sources.isdisjoint(patients["test"] + patients["val"])
    blocks = sorted(p.name for p in (tmp_path / "synthetic" / "procedural" / "lesions").iterdir() if p.is_dir())
    assert blocks == ["phantom-f0-r0-n3", "phantom-f0-r1-n3", "phantom-f1-r0-n3", "phantom-f1-r1-n3"]
    log = json.loads((tmp_path / "synthetic" / "procedural" / "lesions" / blocks[0] / "synthesis.json").read_text())
    assert len(log["patients"]) == 3  # the largest k, shared by k = 2 and 3 of that block


def test_a_leaking_procedural_folder_is_refused(tmp_path):
    lesions = {"name": "lesions", "procedural": "lesion-insertion",
               "config": str(Path(__file__).resolve().parents[1] / "configs" / "procedural" / "phantom-lesions.yaml")}
    config = load_study_config(MICRO, [f"arms={json.dumps([lesions])}", "k=[2]", "train.iterations=2",
                                       "train.val_every=2", "splits.folds=[0]"])
    run_study(config, tmp_path, device="cpu", progress=False, threads=1)
    block = tmp_path / "synthetic" / "procedural" / "lesions" / "phantom-f0-r0-nall"
    log = json.loads((block / "synthesis.json").read_text())
    test_patient = json.loads((tmp_path / "splits" / "phantom.json").read_text())["test"][0]
    log["patients"][0]["sources"] = [test_patient]  # as if a test patient had reached the synthesiser
    atomic_write_json(block / "synthesis.json", log)
    for path in (tmp_path / "runs").glob("*lesions*"):
        path.unlink()
    with pytest.raises(StudyDataError, match=f"made from \\['{test_patient}'\\], which are not this block's"):
        run_study(config, tmp_path, device="cpu", progress=False, threads=1)


def test_parallel_workers_give_the_results_of_one_process(micro_study, sources, tmp_path):
    from segmentation.study.runner import run_study_parallel

    config, results, summary = micro_study
    parallel = run_study_parallel(config, tmp_path, jobs=2, device="cpu", threads=1)
    assert sorted(parallel.ran) == sorted(r.run_id for r in summary.runs) and not parallel.skipped
    assert dice_by_key(tmp_path) == dice_by_key(results)


def test_synthetic_only_runs_train_without_real_patients(sources, tmp_path):
    config = micro_config(sources, "n_real=[0, 2]", "k=[3]", "splits.folds=[0]", "train.iterations=2",
                          "train.val_every=2")
    summary = run_study(config, tmp_path, device="cpu", progress=False, threads=1)
    ids = sorted(summary.ran)
    assert "phantom-f0-r0-real-k0-n0" not in ids and "phantom-f0-r0-real-k0-n2" in ids
    record = json.loads((tmp_path / "runs" / "phantom-f0-r0-other-k3-n0.json").read_text())
    assert record["patients"]["train_real"] == [] and record["slices"]["train_real"] == 0
    assert record["slices"]["train_synthetic"] == 3 * 8 and record["cases"]
    assert {r["n_real"] for r in read_cases(tmp_path)} == {"0", "2"}
    with pytest.raises(StudyConfigError, match="absolute k > 0"):
        micro_config(sources, "n_real=[0]", 'k=["1x"]')


def test_out_of_distribution_test_sets_are_scored_by_label_name(sources, tmp_path):
    shifted = {"name": "shifted", "path": "phantoms",
               "phantoms": {"n_patients": 3, "shape": [32, 32, 8], "seed": 5, "shifted": True}}
    config = micro_config(sources, f"test_datasets={json.dumps([shifted])}", "arms=[]", "splits.folds=[0]",
                          "train.iterations=2", "train.val_every=2")
    run_study(config, tmp_path, device="cpu", progress=False, threads=1)
    rows = read_cases(tmp_path)
    by_set = {s: {r["case"] for r in rows if r["test_set"] == s} for s in {r["test_set"] for r in rows}}
    assert set(by_set) == {"in-distribution", "shifted"} and len(by_set["shifted"]) == 3
    assert {r["class"] for r in rows if r["test_set"] == "shifted"} == set(PHANTOM_LABELS[1:]) | {"foreground"}


def test_a_test_set_with_other_label_names_is_refused(sources, tmp_path):
    other = tmp_path / "other_labels"
    write_noise_dataset(other, 2)
    meta = json.loads((other / "dataset.json").read_text())
    meta["labels"] = {("tumour" if n == "core" else n): v for n, v in meta["labels"].items()}
    atomic_write_json(other / "dataset.json", meta)
    config = micro_config(sources, f'test_datasets=[{{"name": "other", "path": "{other}"}}]', "arms=[]",
                          "splits.folds=[0]", "train.iterations=2")
    with pytest.raises(StudyDataError, match="test dataset 'other': label names .* differ from dataset 'phantom'"):
        run_study(config, tmp_path / "results", device="cpu", progress=False, threads=1)


def test_changed_patients_between_invocations_are_refused_naming_the_case(sources, tmp_path):
    import shutil

    synthetic = tmp_path / "other"
    shutil.copytree(sources["other"], synthetic)
    config = micro_config({"other": synthetic}, "k=[2]", "splits.folds=[0]", "repeats=2", "train.iterations=2",
                          "train.val_every=2")
    results = tmp_path / "results"
    run_study(config, results, shard_index=1, shard_count=2, device="cpu", progress=False, threads=1)
    record = json.loads((results / "data.json").read_text())
    assert set(record["sources"]) == {"real/phantom", "synthetic/phantom/other"}
    run = json.loads(next((results / "runs").glob("*other*.json")).read_text())
    assert set(run["data_fingerprints"]["synthetic"]) == set(run["patients"]["train_synthetic"])
    # re-sample the synthetic folder between two shards: same case ids, other voxels
    image = synthetic / "imagesTr" / "phantom_000_0000.nii.gz"
    volume = nib.load(image)
    nib.save(nib.Nifti1Image(np.asarray(volume.dataobj) * 0.5 + 7, volume.affine), image)
    with pytest.raises(StudyDataError, match=r"synthetic/phantom/other case\(s\) \['phantom_000'\].*--accept-changed-data"):
        run_study(config, results, shard_index=0, shard_count=2, device="cpu", progress=False, threads=1)
    run_study(config, results, shard_index=0, shard_count=2, device="cpu", progress=False, threads=1,
              accept_changed_data=True)
    from segmentation.report.cli_report import main as report_main
    assert report_main([str(results), "--no-plots"]) == 0
    assert "WARNING: this results folder mixes runs on changed data" in (results / "report" / "report.md").read_text()


def test_a_real_dataset_given_as_a_synthetic_arm_is_refused_for_holding_test_patients(tmp_path):
    real_folder = study_data.dataset_root(load_study_config(MICRO).datasets[0])
    config = micro_config({"copy": real_folder}, "k=[2]", "splits.folds=[0]", "train.iterations=2")
    with pytest.raises(StudyDataError, match=r"arm 'copy' holds 2 test patient\(s\) of the study \(phantom_0\d\d = "
                                             r"phantom_0\d\d.*would train on the patients they are tested on"):
        run_study(config, tmp_path, device="cpu", progress=False, threads=1)
    assert not list((tmp_path / "runs").glob("*.json"))


def test_results_into_a_dataset_or_a_user_folder_are_refused(sources, tmp_path, capsys):
    from segmentation.study.cli_study import main

    config = micro_config(sources, "k=[2]", "splits.folds=[0]", "train.iterations=2")
    with pytest.raises(StudyDataError, match="looks like a dataset and holds no study.json"):
        run_study(config, sources["other"], device="cpu", progress=False, threads=1)
    assert not (sources["other"] / "runs").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit) as exit_info:
        main([str(MICRO), "--results", str(tmp_path / "mine"), "--dry-run", "--allow-weak-design"])
    assert exit_info.value.code == 2 and "is not empty and holds no study.json" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]


TINY_GAN = TINY_GAN_ARGS + ["--kimg", "0.004", "--variant", "baseline", "--cond", "slice-position"]


def test_a_gan_arm_trained_on_the_study_s_test_patients_is_refused(tmp_path, capsys):
    from training import checkpoint as ckpt
    from training.cli_train import main as train_main
    from training.data import make_splits

    config = load_study_config(MICRO, ["k=[2]", "splits.folds=[0]", "train.iterations=2", "train.val_every=2"])
    spec = config.datasets[0]
    data = study_data.dataset_root(spec)
    copy = tmp_path / "copy"  # the same patients in another folder: found by content, not by path
    import shutil
    shutil.copytree(data, copy)
    s = config.splits
    splits = make_splits(sorted(p.name.split(".")[0] for p in (data / "labelsTr").glob("*.nii.gz")),
                         s.n_folds, s.seed, s.test_fraction)
    splits_file = splits.save(tmp_path / "splits.json")
    assert train_main(TINY_GAN + ["--data", str(copy), "--out", str(tmp_path / "leaky")]) == 0
    assert train_main(TINY_GAN + ["--data", str(copy), "--out", str(tmp_path / "clean"),
                                  "--splits", str(splits_file)]) == 0
    info = ckpt.read_json(ckpt.latest_good_snapshot(tmp_path / "clean") / "dataset.json")
    assert info["excluded_case_ids"] == sorted(splits.test) and not set(info["case_ids"]) & set(splits.test)
    assert set(info["case_label_sha256"]) == set(info["case_ids"])
    leaky = dataclasses_replace_arms(config, {"name": "gan", "gan": str(tmp_path / "leaky"), "patients": 2})
    with pytest.raises(StudyDataError, match=r"arm 'gan': generator run .*leaky was trained on 2 of this study's "
                                             r"test patients .*--splits"):
        run_study(leaky, tmp_path / "r1", device="cpu", progress=False, threads=1)
    clean = dataclasses_replace_arms(config, {"name": "gan", "gan": str(tmp_path / "clean"), "patients": 2})
    assert run_study(clean, tmp_path / "r2", device="cpu", progress=False, threads=1).ran


def dataclasses_replace_arms(config, arm):
    from segmentation.study.study_config import study_config_from_dict

    values = config.to_dict()
    values["arms"] = [arm]
    values["datasets"][0]["preprocess"] = {"resolution": 16, "drop_end_slices": 0}
    return study_config_from_dict(values)


def test_the_committed_generators_are_checked_by_content_against_the_test_set(tmp_path):
    # they were trained on the 20 embedded phantoms of seed 0 before hashes were recorded: the study
    # regenerates those phantoms and finds the test patients among them
    checkpoints = Path(__file__).resolve().parents[1] / "checkpoints"
    config = load_study_config(MICRO, [
        'datasets=[{"name": "phantom", "path": "phantoms", "phantoms": {"n_patients": 20, "shape": [64, 64, 24], '
        '"seed": 0}, "preprocess": {"resolution": 32, "drop_end_slices": 0}}]',
        f'arms=[{{"name": "gan", "gan": "{checkpoints / "tiny-baseline"}", "patients": 2}}]', "k=[2]",
        "splits.folds=[0]", "train.iterations=2"])
    with pytest.raises(StudyDataError, match=r"tiny-baseline was trained on \d of this study.s test patients"):
        run_study(config, tmp_path, device="cpu", progress=False, threads=1)


@pytest.mark.parametrize("convention", ["diagonal", "exclude"])
def test_a_missed_structure_has_a_usable_hd95(sources, tmp_path, convention):
    import torch

    class Background(torch.nn.Module):  # predicts nothing but background: every structure is missed
        out_channels = len(PHANTOM_LABELS)

        def forward(self, images):
            logits = torch.zeros(images.shape[0], self.out_channels, *images.shape[2:])
            logits[:, 0] = 1.0
            return logits

    config = micro_config(sources, "arms=[]", f"hd95_missed={convention}")
    real = study_data.load_real(config.datasets[0], config, tmp_path)
    case = real.splits.test[0]
    rows = runner.score_test_patients(Background(), real, [case], config, torch.device("cpu"))
    missed = [r for r in rows if r["in_reference"]]
    assert missed and all(r["dice"] == 0.0 for r in missed)
    images, labels = real.cache.volume(case)
    diagonal = float(np.linalg.norm(np.array(labels.shape) * np.array(real.cache.case_info(case).slice_spacing)))
    assert all((r["hd95"] is None) if convention == "exclude" else r["hd95"] == pytest.approx(diagonal)
               for r in missed)


def test_a_coarser_synthetic_arm_is_named_with_what_the_study_does(sources, tmp_path, capsys):
    coarse = write_phantom_dataset(tmp_path / "coarse", n_patients=4, shape=(8, 8, 8), seed=3, layout="nnunet")
    config = micro_config({"coarse": coarse}, "k=[2]", "splits.folds=[0]", "train.iterations=1",
                          "train.val_every=1")
    run_study(config, tmp_path / "r", device="cpu", progress=False, threads=1)
    assert ("arm 'coarse': its patients are 8 px in-plane and the study trains at 16 px: they are upsampled 2.0x"
            in capsys.readouterr().err)
    capsys.readouterr()
    run_study(micro_config(sources, "k=[2]", "splits.folds=[0]", "train.iterations=1", "train.val_every=1"),
              tmp_path / "r2", device="cpu", progress=False, threads=1)
    assert "upsampled" not in capsys.readouterr().err


def test_a_study_in_a_log_file_writes_a_progress_line_per_run(sources, tmp_path, capsys):
    config = micro_config(sources, "arms=[]", "splits.folds=[0]", "train.iterations=1", "train.val_every=1",
                          "repeats=2")
    run_study(config, tmp_path, device="cpu", progress=True, threads=1)  # pytest's stderr is not a terminal
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("study micro: ")]
    assert len(lines) == 2 and lines[-1].startswith("study micro: 2/2 runs, phantom-f0-r1-real-k0-nall done in ")
    assert "s/run, ETA 0.0 min" in lines[-1]


def test_an_arm_sampled_on_the_real_grid_is_judged_by_its_generator_resolution(tmp_path):
    from training.sampling.synthetic_dataset import SynthesisLog
    from segmentation.study.study_data import resolution_warning
    from training.data import load_dataset

    folder = write_phantom_dataset(tmp_path / "syn", n_patients=1, shape=(32, 32, 4), seed=3, layout="nnunet")
    dataset = load_dataset(folder)
    assert resolution_warning("gan", dataset, 32) is None          # 32 px files, nothing says otherwise
    SynthesisLog(dataset.modalities, dataset.label_values, dataset.label_names, 16).save(folder / "synthesis.json")
    assert resolution_warning("gan", dataset, 32) == (
        "warning: arm 'gan': its patients were generated at 16 px and the study trains at 32 px: they are upsampled "
        "2.0x (blurred); train the generators at 32 px, or study at 16 px")

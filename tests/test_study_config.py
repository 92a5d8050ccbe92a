"""Study YAML -> StudyConfig (clear errors naming the key), overrides, the grid, shards, the CLI."""
import json
from pathlib import Path

import pytest
import yaml

from segmentation.study.cli_study import build_parser, main
from segmentation.study.grid import describe_grid, expand_grid, parse_shard, shard
from segmentation.study.study_config import (StudyConfigError, apply_overrides, load_study_config, resolve_k,
                                       study_config_from_dict)

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "study"


def _write(tmp_path: Path, values: dict, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return path


def _minimal(**extra) -> dict:
    return {"datasets": [{"name": "d", "path": "phantoms"}], **extra}


@pytest.mark.parametrize("name", ["micro", "phantom_demo", "paper"])
def test_shipped_configs_load(name):
    config = load_study_config(CONFIGS / f"{name}.yaml")
    assert config.name == name
    assert config.datasets and config.metrics[0] == "dice"


def test_defaults_and_name_from_file(tmp_path):
    config = load_study_config(_write(tmp_path, _minimal(), "my_study.yaml"))
    assert config.name == "my_study" and config.baseline and config.arms == ()
    assert config.unet.channels == (16, 32, 64, 128) and config.train.iterations == 2000


@pytest.mark.parametrize("values, key", [
    (_minimal(epochs=3), "epochs"),
    (_minimal(train={"iterationz": 3}), "train.iterationz"),
    (_minimal(train={"augment": {"flip": 0.5}}), "train.augment.flip"),
    ({"datasets": [{"path": "phantoms", "prepro": {}}]}, "datasets[0].prepro"),
    (_minimal(arms=[{"name": "a", "folder": "x", "colour": 1}]), "arms[0].colour"),
    (_minimal(unet={"channels": [8, 16], "strides": [2, 2]}), "unet.strides"),
])
def test_unknown_or_bad_keys_are_named(tmp_path, values, key):
    path = _write(tmp_path, values)
    with pytest.raises(StudyConfigError) as error:
        load_study_config(path)
    assert str(path) in str(error.value) and key in str(error.value)


@pytest.mark.parametrize("values, fragment", [
    ({}, "datasets: missing"),
    (_minimal(train={"iterations": "many"}), "expected an integer"),
    (_minimal(arms=[{"name": "a", "folder": "x", "gan": "y"}], k=[1]), "exactly one of 'folder', 'gan', 'control' or 'procedural'"),
    (_minimal(arms=[{"name": "real", "folder": "x"}], k=[1]), "real-only baseline"),
    (_minimal(arms=[{"name": "a", "folder": "x"}]), "need at least one k > 0"),
    (_minimal(k=["two"]), "multiple of n"),
    (_minimal(metrics=["dice", "iou"]), "choose from"),
    (_minimal(splits={"n_folds": 3, "folds": [3]}), "fold indices"),
    (_minimal(preprocess_typo=1), "unknown key"),
    ({"datasets": [{"path": "phantoms", "preprocess": {"resolution": 2}}]}, "resolution must lie in 4..4096"),
    ({"datasets": [{"path": "x", "phantoms": {"n_patients": 2}}]}, "only allowed with path: phantoms"),
    ({"datasets": [{"path": "x", "preprocess": {"resolution": 20}}]}, "not divisible by 8"),
])
def test_invalid_values_give_clear_errors(values, fragment):
    with pytest.raises(StudyConfigError, match=fragment):
        study_config_from_dict(values, where="bad.yaml")


def test_not_yaml_and_missing_file(tmp_path):
    with pytest.raises(StudyConfigError, match="no such study config"):
        load_study_config(tmp_path / "absent.yaml")
    path = tmp_path / "broken.yaml"
    path.write_text("datasets: [unclosed\n")
    with pytest.raises(StudyConfigError, match="not valid YAML"):
        load_study_config(path)


def test_overrides_by_dotted_key_index_and_name():
    values = _minimal(arms=[{"name": "pair", "folder": "a"}, {"name": "noise", "folder": "b"}], k=[1])
    out = apply_overrides(values, ["train.iterations=7", "arms.noise.folder=/x/y", "arms.0.psi=0.5",
                                   'k=[2, "1x"]'])
    config = study_config_from_dict(out)
    assert config.train.iterations == 7 and config.arm("noise").folder == "/x/y"
    assert config.arm("pair").folder == "a" and config.k == (2, "1x")
    assert values["arms"][1]["folder"] == "b"  # the input is not modified
    with pytest.raises(StudyConfigError, match="no list item 'gan'"):
        apply_overrides(values, ["arms.gan.folder=z"])
    with pytest.raises(StudyConfigError, match="not key=value"):
        apply_overrides(values, ["train.iterations"])


def test_an_override_inside_a_named_preprocessing_preset_changes_that_preset_only():
    values = _minimal(datasets=[{"name": "ct", "path": "phantoms", "preprocess": "ct"}])
    config = study_config_from_dict(apply_overrides(values, ["datasets.ct.preprocess.resolution=32"]))
    preprocess = config.datasets[0].preprocess
    assert preprocess.resolution == 32 and preprocess.ct_norm.lower == -1000.0 and preprocess.drop_end_slices == 10
    with pytest.raises(StudyConfigError, match="no such preprocessing config"):
        apply_overrides(_minimal(datasets=[{"name": "x", "path": "p", "preprocess": "nope"}]),
                        ["datasets.x.preprocess.resolution=32"])


def test_resolve_k():
    assert resolve_k(5, 12) == 5
    assert resolve_k("1x", 12) == 12 and resolve_k("0.5x", 12) == 6 and resolve_k("2x", 3) == 6
    assert resolve_k("0.5x", 13) == 7 and resolve_k("0.5x", 3) == 2  # half up, not to even


def _grid_config(**extra):
    return study_config_from_dict(_minimal(arms=[{"name": "syn", "folder": "f"}, {"name": "noise", "folder": "g"}],
                                           k=[3, "1x", 0], splits={"n_folds": 2}, **extra))


def test_grid_runs_and_ids():
    config = _grid_config(n_real=[None, 2], repeats=2)
    runs = expand_grid(config, {("d", 0): 3, ("d", 1): 4})
    ids = [r.run_id for r in runs]
    assert len(ids) == len(set(ids))
    # n = all: "1x" is taken of the smallest fold (3) in both folds, so k 3 == "1x" -> one k per arm;
    # n = 2: k 3 and "1x" = 2.
    per_cell = {(r.fold, r.repeat, r.n_real): 0 for r in runs}
    for r in runs:
        per_cell[(r.fold, r.repeat, r.n_real)] += 1
    assert per_cell == {(0, 0, 3): 3, (0, 1, 3): 3, (0, 0, 2): 5, (0, 1, 2): 5,
                        (1, 0, 4): 3, (1, 1, 4): 3, (1, 0, 2): 5, (1, 1, 2): 5}
    k_by_fold = {f: {r.n_synthetic for r in runs if r.fold == f and r.n_real_requested is None} for f in (0, 1)}
    assert k_by_fold[0] == k_by_fold[1] == {0, 3}  # conditions line up across folds
    assert all(r.n_synthetic == 0 for r in runs if r.arm == "real")
    assert all(r.n_synthetic > 0 for r in runs if r.arm != "real")
    assert "d-f1-r1-noise-k3-nall" in ids and "d-f0-r0-syn-k2-n2" in ids
    seeds = {(r.dataset, r.fold, r.repeat, r.n_real_requested): r.seed for r in runs}
    assert all(r.seed == seeds[(r.dataset, r.fold, r.repeat, r.n_real_requested)] for r in runs)
    assert "runs:" in describe_grid(runs) and str(len(runs)) in describe_grid(runs)
    with pytest.raises(StudyConfigError, match="n_real 2 exceeds the 1 real training patients"):
        expand_grid(config, {("d", 0): 1, ("d", 1): 4})


def test_shards_partition_the_grid():
    runs = expand_grid(_grid_config(), {("d", 0): 3, ("d", 1): 4})
    parts = [shard(runs, i, 3) for i in range(3)]
    ids = [r.run_id for part in parts for r in part]
    assert sorted(ids) == sorted(r.run_id for r in runs) and len(ids) == len(set(ids))
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "a/2", "1", "-1/2"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)


def test_cli_help_shows_defaults():
    text = build_parser().format_help()
    for fragment in ("--results DIR", "results/NAME", "--shard I/N", "0/1", "--dry-run", "--device", "auto",
                     "--set KEY=VALUE", "--synthetic NAME=FOLDER", "--threads", "iterations"):
        assert fragment in text


def test_cli_bad_config_exits_with_message(tmp_path, capsys):
    path = _write(tmp_path, _minimal(trian={"iterations": 3}))
    with pytest.raises(SystemExit) as exit_info:
        main([str(path), "--dry-run"])
    assert exit_info.value.code == 2
    assert "trian" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(CONFIGS / "micro.yaml"), "--shard", "2/2", "--dry-run"])
    assert "--shard" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(CONFIGS / "micro.yaml"), "--device", "gpu", "--dry-run"])
    captured = capsys.readouterr()
    assert "--device 'gpu'" in captured.err and captured.out == ""


def test_cli_dry_run_prints_grid_and_cost_and_writes_nothing(tmp_path, capsys):
    results = tmp_path / "results"
    main([str(CONFIGS / "micro.yaml"), "--dry-run", "--results", str(results), "--device", "cpu", "--threads", "1",
          "--synthetic", f"other={phantom_folder(tmp_path)}", "--set", "train.iterations=5",
          "--allow-weak-design"])
    out = capsys.readouterr().out
    assert "2 blocks x 2 comparisons: can never reach p < 0.05 after Holm (needs >= 7 blocks)" in out
    assert "phantom-f0-r0-real-k0-nall" in out and "phantom-f1-r0-other-k3-nall" in out
    assert "6 runs" in out and "ms/slice to segment, measured on cpu" in out and "estimated time: " in out
    assert "5 steps x 8 slices" in out
    assert not results.exists()


def test_with_synthetic_folders_replaces_or_appends(tmp_path):
    from segmentation.study.study_config import with_synthetic_folders

    config = study_config_from_dict(_minimal(arms=[{"name": "pair", "gan": "runs/x", "psi": 0.7}], k=["1x"]))
    updated = with_synthetic_folders(config, {"pair": tmp_path / "a", "noise": "relative/b"})
    assert [a.name for a in updated.arms] == ["pair", "noise"]
    assert updated.arm("pair").folder == str(tmp_path / "a") and updated.arm("pair").gan is None
    assert Path(updated.arm("noise").folder).is_absolute()
    with pytest.raises(StudyConfigError, match="real-only baseline"):
        with_synthetic_folders(config, {"real": tmp_path})
    with pytest.raises(StudyConfigError, match="need at least one k > 0"):
        with_synthetic_folders(study_config_from_dict(_minimal()), {"pair": tmp_path})


def test_dry_run_refuses_a_design_that_can_never_reject_and_names_the_fix(tmp_path, capsys):
    argv = [str(CONFIGS / "micro.yaml"), "--dry-run", "--results", str(tmp_path / "r"), "--device", "cpu",
            "--synthetic", f"other={phantom_folder(tmp_path)}"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "smallest p of the exact paired test is 0.5" in err and "Use at least 7 blocks" in err
    assert "raise 'repeats'" in err and "--allow-weak-design" in err
    assert main(argv + ["--set", "repeats=4", "--set", "k=[2]"]) == 0  # 2 folds x 4 repeats = 8 blocks, 1 comparison
    out = capsys.readouterr().out
    assert "8 blocks x 1 comparisons with real-only" in out and "with 80% power" in out


def test_control_arms_are_read_and_checked():
    config = study_config_from_dict(_minimal(arms=[{"name": "noise", "control": "noise"},
                                                   {"name": "shuffled", "control": "shuffled"}], k=[2]))
    assert [a.kind for a in config.arms] == ["control", "control"]
    assert config.arm("noise").source == "control:noise"
    with pytest.raises(StudyConfigError, match="unknown control 'oracel'"):
        study_config_from_dict(_minimal(arms=[{"name": "o", "control": "oracel"}], k=[2]))
    with pytest.raises(StudyConfigError, match="every dataset must be path: phantoms"):
        study_config_from_dict({"datasets": [{"name": "d", "path": "some/folder"}],
                                "arms": [{"name": "o", "control": "oracle"}], "k": [2]})
    with pytest.raises(StudyConfigError, match="train.epochs"):
        study_config_from_dict(_minimal(train={"budget": "epochs"}))
    with pytest.raises(StudyConfigError, match="train.real_fraction"):
        study_config_from_dict(_minimal(train={"real_fraction": 1.5}))
    with pytest.raises(StudyConfigError, match="early stopping needs validation"):
        study_config_from_dict(_minimal(train={"validation": "none", "patience": 3}))


def test_synthetic_only_cells_have_no_baseline_and_no_arm_made_from_real_patients():
    lesions = {"name": "lesions", "procedural": "lesion-insertion",
               "config": str(CONFIGS.parent / "procedural" / "phantom-lesions.yaml")}
    config = study_config_from_dict(_minimal(arms=[{"name": "syn", "folder": "f"}, lesions],
                                             k=[3, "1x"], n_real=[0, 2], splits={"n_folds": 2}))
    runs = expand_grid(config, {("d", 0): 3, ("d", 1): 4})
    at_zero = {(r.arm, r.n_synthetic) for r in runs if r.n_real == 0}
    assert at_zero == {("syn", 3)}  # "1x" of 0 is 0, real-only and lesions need real patients
    assert {(r.arm, r.n_synthetic) for r in runs if r.n_real == 2} == {("real", 0), ("syn", 3), ("syn", 2),
                                                                      ("lesions", 3), ("lesions", 2)}
    with pytest.raises(StudyConfigError, match="all made from the run's real training patients"):
        study_config_from_dict(_minimal(arms=[lesions], k=[3], n_real=[0, 2]))


def phantom_folder(tmp_path, modalities=None):
    """A small synthetic-arm folder (nnU-Net layout) with the micro study's channels and labels."""
    from training.data import write_phantom_dataset

    folder = write_phantom_dataset(tmp_path / "arm", n_patients=4, shape=(32, 32, 8), seed=9, layout="nnunet")
    if modalities is not None:
        meta = json.loads((folder / "dataset.json").read_text())
        meta["channel_names"] = {str(i): m for i, m in enumerate(modalities)}
        (folder / "dataset.json").write_text(json.dumps(meta))
    return folder


def test_dry_run_checks_a_synthetic_folder_as_the_real_run_does(tmp_path, capsys):
    argv = [str(CONFIGS / "micro.yaml"), "--dry-run", "--results", str(tmp_path / "r"), "--allow-weak-design"]
    with pytest.raises(SystemExit):
        main(argv + ["--synthetic", f"other={tmp_path / 'missing'}"])
    assert "does not exist" in capsys.readouterr().err
    renamed = phantom_folder(tmp_path, modalities=["t1", "t1ce", "t2", "flair"])
    with pytest.raises(SystemExit):
        main(argv + ["--synthetic", f"other={renamed}"])
    assert "the synthetic patients have channels ['t1', 't1ce', 't2', 'flair'] instead of" in capsys.readouterr().err

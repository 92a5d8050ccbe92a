"""``stylepair-data``: phantoms, inspect (with problems listed), cache, splits, clear errors."""
import json

import pytest

from training.data import Splits, load_dataset
from training.data.cli import build_parser, main


@pytest.fixture()
def phantoms(tmp_path):
    out = tmp_path / "ph"
    assert main(["phantoms", str(out), "--patients", "3", "--seed", "2", "--shape", "16", "16", "6",
                 "--layout", "nnunet"]) == 0
    return out


def assert_label_voxels_and_intensity_ranges(root, text):
    """Each label row shows the dataset's total voxel count of that label; each modality row of the
    intensity table shows min <= p0.5 <= median <= p99.5 <= max over the foreground."""
    dataset = load_dataset(root)
    lines = text.splitlines()
    for value, name in zip(dataset.label_values, dataset.label_names):
        total = sum(p.stats.label_voxels.get(value, 0) for p in dataset.patients)
        row = next(line.split() for line in lines if line.split()[1:3] == [str(value), name])
        assert row[3] == f"{total:,}", row
    table = lines.index(next(line for line in lines if line.startswith("intensity")))
    for offset, modality in enumerate(dataset.modalities, start=2):
        row = lines[table + offset].split()
        assert row[0] == modality, row
        numbers = [float(v) for v in row[1:]]
        assert numbers == sorted(numbers) and numbers[0] < numbers[-1], row


def test_inspect_prints_everything(phantoms, capsys):
    capsys.readouterr()
    assert main(["inspect", str(phantoms)]) == 0
    text = capsys.readouterr().out
    for expected in ("layout      nnunet", "patients    3 usable, 0 skipped", "modalities  4: T1, T1ce, T2, FLAIR",
                     "labels      6 classes", "white_matter", "shapes      16x16x6 (3)",
                     "spacings    13.75x13.75x25 mm (3)", "FLAIR", "problems    none"):
        assert expected in text, text
    assert_label_voxels_and_intensity_ranges(phantoms, text)
    assert main(["inspect", str(phantoms), "--per-patient"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-4].split()[:4] == ["case", "shape", "spacing", "(mm)"]
    assert lines[-1].split()[:3] == ["phantom_002", "16x16x6", "13.8x13.8x25"]


def test_inspect_lists_skipped_patients_and_fail_mode_exits_1(phantoms, capsys):
    bad = phantoms / "imagesTr" / "phantom_001_0001.nii.gz"
    bad.write_bytes(b"not nifti")
    capsys.readouterr()
    assert main(["inspect", str(phantoms)]) == 0
    text = capsys.readouterr().out
    assert "patients    2 usable, 1 skipped" in text and "problems    1" in text
    assert f"skipped phantom_001: {bad}: not a readable NIfTI file" in text
    assert main(["inspect", str(phantoms), "--on-error", "fail"]) == 1
    assert f"{bad}: not a readable NIfTI file" in capsys.readouterr().err


def test_cache_and_splits_commands(phantoms, tmp_path, capsys):
    assert main(["cache", str(phantoms), "--resolution", "8", "--cache-dir", str(tmp_path / "c")]) == 0
    text = capsys.readouterr().out
    assert "18 from 3 patients, 8x8, 4 modalities, float32" in text and str(tmp_path / "c") in text
    out = str(tmp_path / "s.json")
    assert main(["splits", str(phantoms), "--out", out, "--folds", "2", "--test-fraction", "0"]) == 0
    assert Splits.load(tmp_path / "s.json").n_folds == 2
    assert json.loads((tmp_path / "s.json").read_text())["seed"] == 12345


def test_cache_takes_the_same_dotted_overrides_as_training_and_the_study(phantoms, tmp_path, capsys):
    cache_dir = tmp_path / "c"
    assert main(["cache", str(phantoms), "--config", "ct", "--set", "modality_norm.T2.upper=900", "--set",
                 "resolution=8", "--set", "drop_end_slices=1", "--cache-dir", str(cache_dir)]) == 0
    index = json.loads(next(cache_dir.rglob("index.json")).read_text())
    assert index["preprocess"]["modality_norm"]["T2"]["upper"] == 900.0 and index["preprocess"]["resolution"] == 8
    assert "training    12 slices after drop_end_slices=1" in capsys.readouterr().out
    assert main(["cache", str(phantoms), "--set", "mr_norm.uper=99", "--cache-dir", str(cache_dir)]) == 1
    assert "preprocessing defaults + --set: mr_norm.uper: unknown key (known keys: foreground_only, lower, method, " \
           "upper)" in capsys.readouterr().err


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert main(["phantoms", str(tmp_path / "full"), "--patients", "1"]) == 1
    assert "not empty" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["phantoms", "out", "--layout", "dicom"])


def test_splits_never_overwrite_the_dataset_s_own_files(phantoms, capsys):
    before = (phantoms / "dataset.json").read_bytes()
    assert main(["splits", str(phantoms), "--out", str(phantoms / "dataset.json")]) == 1
    assert "is a file of the dataset itself" in capsys.readouterr().err
    assert (phantoms / "dataset.json").read_bytes() == before
    assert main(["splits", str(phantoms), "--out", str(phantoms)]) == 1
    assert "is a folder" in capsys.readouterr().err


def test_inspect_refuses_a_forged_header_at_once_and_says_why(tmp_path, capsys):
    import gzip
    import time

    import nibabel as nib
    import numpy as np

    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4))
    img.header.set_data_shape((1500, 1500, 1000))
    raw = gzip.compress(img.header.binaryblock + b"\x00" * 4)
    (tmp_path / "P1").mkdir()
    for name in ("P1_t1.nii.gz", "P1_seg.nii.gz"):
        (tmp_path / "P1" / name).write_bytes(raw)
    started = time.perf_counter()
    assert main(["inspect", str(tmp_path)]) == 1
    assert time.perf_counter() - started < 1.0
    err = capsys.readouterr().err
    assert "no usable patients (1 skipped: " in err and "header declares a volume of shape (1500, 1500, 1000)" in err

"""Bad datasets: every problem gives an error naming the file and the problem (or a skip)."""
import gzip
import json
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from training.data import (DataError, DatasetError, DataWarning, PatientError, PatientErrors, load_dataset,
                           write_phantom_dataset)

SHAPE = (16, 16, 8)


def phantoms(tmp_path: Path, layout: str, n: int = 3) -> Path:
    return write_phantom_dataset(tmp_path / layout, n_patients=n, shape=SHAPE, seed=1, layout=layout)


def rewrite(path: Path, array: np.ndarray | None = None, affine: np.ndarray | None = None) -> None:
    img = nib.load(str(path))
    data = np.asarray(img.dataobj) if array is None else array
    nib.save(nib.Nifti1Image(data, img.affine if affine is None else affine), str(path))


def assert_fails(root: Path, file: Path, problem: str, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        load_dataset(root, **kwargs)
    message = str(info.value)
    assert str(file) in message, message
    assert problem in message, message
    return info.value


def test_missing_modality_nnunet(tmp_path):
    root = phantoms(tmp_path, "nnunet")
    missing = root / "imagesTr" / "phantom_001_0002.nii.gz"
    missing.unlink()
    err = assert_fails(root, missing, "missing modality 'T2'")
    assert isinstance(err, PatientErrors) and [e.case_id for e in err.errors] == ["phantom_001"]


def test_missing_modality_folder(tmp_path):
    root = phantoms(tmp_path, "folder")
    missing = root / "phantom_002" / "phantom_002_FLAIR.nii.gz"
    missing.unlink()
    assert_fails(root, missing, "missing modality 'FLAIR'")


def test_missing_label_file(tmp_path):
    root = phantoms(tmp_path, "nnunet")
    missing = root / "labelsTr" / "phantom_000.nii.gz"
    missing.unlink()
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "numTraining": 2}))
    assert_fails(root, missing, "label file is missing")


def test_shape_disagreement_within_patient(tmp_path):
    root = phantoms(tmp_path, "nnunet")
    bad = root / "imagesTr" / "phantom_000_0001.nii.gz"
    rewrite(bad, np.zeros((16, 16, 7), np.float32))
    assert_fails(root, bad, "shape (16, 16, 7) disagrees")


def test_affine_disagreement_within_patient(tmp_path):
    root = phantoms(tmp_path, "nnunet")
    bad = root / "labelsTr" / "phantom_002.nii.gz"
    affine = nib.load(str(bad)).affine.copy()
    affine[0, 3] += 2.0
    rewrite(bad, affine=affine)
    assert_fails(root, bad, "affine disagrees")


def test_tiny_affine_difference_and_other_orientation_are_accepted(tmp_path):
    root = phantoms(tmp_path, "nnunet")
    jittered = root / "imagesTr" / "phantom_000_0001.nii.gz"
    affine = nib.load(str(jittered)).affine.copy()
    affine[:3, 3] += 1e-6
    rewrite(jittered, affine=affine)
    # The same grid stored flipped along x (LAS): reoriented to RAS it agrees with the others.
    flipped = root / "imagesTr" / "phantom_000_0002.nii.gz"
    img = nib.load(str(flipped))
    stored = np.asarray(img.dataobj).copy()
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = SHAPE[0] - 1
    rewrite(flipped, stored[::-1].copy(), img.affine @ flip)
    dataset = load_dataset(root)
    original = nib.load(str(root / "imagesTr" / "phantom_000_0003.nii.gz"))
    assert len(dataset.patients) == 3
    images = dataset.patient("phantom_000").load_images()
    assert images.shape == (4, *SHAPE)
    np.testing.assert_allclose(images[2], stored, rtol=1e-6)  # flipped back
    np.testing.assert_allclose(images[3], original.get_fdata(), rtol=1e-6)


def test_label_values_outside_declared_set(tmp_path):
    root = phantoms(tmp_path, "msd")
    bad = root / "labelsTr" / "phantom_001.nii.gz"
    label = np.asarray(nib.load(str(bad)).dataobj).copy()
    label[0, 0, 0] = 7
    rewrite(bad, label)
    assert_fails(root, bad, "label values [7] are not declared")


def test_non_integer_labels(tmp_path):
    root = phantoms(tmp_path, "msd")
    bad = root / "labelsTr" / "phantom_000.nii.gz"
    label = np.asarray(nib.load(str(bad)).dataobj).astype(np.float32)
    label[3, 3, 3] = 0.5
    rewrite(bad, label)
    assert_fails(root, bad, "non-integer label values (e.g. 0.5)")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_and_inf_voxels(tmp_path, value):
    root = phantoms(tmp_path, "nnunet")
    bad = root / "imagesTr" / "phantom_002_0000.nii.gz"
    image = np.asarray(nib.load(str(bad)).dataobj).copy()
    image[4, 5, 6] = value
    rewrite(bad, image)
    assert_fails(root, bad, "1 NaN/inf voxel(s), first at voxel (4, 5, 6)")


def test_truncated_gzip(tmp_path):
    root = phantoms(tmp_path, "msd")
    half = root / "imagesTr" / "phantom_001.nii.gz"
    half.write_bytes(half.read_bytes()[: half.stat().st_size // 2])  # header readable, voxels cut
    early = root / "labelsTr" / "phantom_002.nii.gz"
    early.write_bytes(early.read_bytes()[:40])  # cut inside the header
    err = assert_fails(root, half, "truncated or corrupt voxel data (EOFError")
    assert f"{early}: truncated or corrupt gzip file" in str(err)


def test_undeclared_labels_caught_at_cache_build_without_voxel_checks(tmp_path):
    from training.data import PatientError, PreprocessConfig, open_slice_cache

    root = phantoms(tmp_path, "msd")
    bad = root / "labelsTr" / "phantom_000.nii.gz"
    label = np.asarray(nib.load(str(bad)).dataobj).copy()
    label[1, 1, 1] = 6
    rewrite(bad, label)
    dataset = load_dataset(root, check_voxels=False)
    with pytest.raises(PatientError, match=r"label values \[6\] are not among"):
        open_slice_cache(dataset, PreprocessConfig(resolution=8))
    assert not [p for p in (root / ".stylepair_cache").iterdir() if p.is_dir()]  # nothing half-built left


def test_non_nifti_files(tmp_path):
    root = phantoms(tmp_path, "nnunet")
    text = root / "imagesTr" / "phantom_000_0000.nii.gz"
    text.write_text("this is not an image")
    garbage = root / "labelsTr" / "phantom_001.nii.gz"
    garbage.write_bytes(gzip.compress(b"\x00" * 400))
    err = assert_fails(root, text, "not a readable NIfTI file (ImageFileError: the file is not a gzip file)")
    assert f"{garbage}: not a readable NIfTI file" in str(err)


def test_empty_and_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_text("")
    assert_fails(tmp_path / "empty", tmp_path / "empty", "dataset folder is empty")
    assert_fails(tmp_path / "nowhere", tmp_path / "nowhere", "does not exist")


def test_dataset_json_missing(tmp_path):
    root = phantoms(tmp_path, "msd")
    (root / "dataset.json").unlink()
    assert_fails(root, root / "dataset.json", "dataset.json is missing")
    assert_fails(root, root / "dataset.json", "dataset.json is missing", layout="nnunet")


def test_dataset_json_not_json(tmp_path):
    root = phantoms(tmp_path, "nnunet")
    (root / "dataset.json").write_text("{'channel_names': ")
    assert_fails(root, root / "dataset.json", "not valid JSON")


@pytest.mark.parametrize("change, problem", [
    ({"numTraining": 5}, "numTraining=5 but labelsTr/ has 3 case(s)"),
    ({"labels": {"lesion": 1}}, "must declare the background value 0"),
    ({"labels": {"background": 0, "a": 1, "b": 1}}, "declares value(s) [1] more than once"),
    ({"labels": {"background": 0, "whole": [1, 2]}}, "region-based"),
    ({"channel_names": {"0": "T1", "2": "T2"}}, "without gaps"),
    ({"file_ending": ".mha"}, "file_ending '.mha' is not supported"),
])
def test_dataset_json_inconsistent(tmp_path, change, problem):
    root = phantoms(tmp_path, "nnunet")
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, **change}))
    err = assert_fails(root, root / "dataset.json", problem)
    assert isinstance(err, DatasetError)


def test_msd_training_list_inconsistent(tmp_path):
    root = phantoms(tmp_path, "msd")
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "numTraining": 4}))
    assert_fails(root, root / "dataset.json", "numTraining=4 but the 'training' list has 3")
    meta["training"][1]["image"] = "./imagesTr/phantom_404.nii.gz"
    (root / "dataset.json").write_text(json.dumps(meta))
    assert_fails(root, root / "imagesTr" / "phantom_404.nii.gz", "file is missing")


def test_msd_wrong_number_of_channels(tmp_path):
    root = phantoms(tmp_path, "msd")
    bad = root / "imagesTr" / "phantom_002.nii.gz"
    rewrite(bad, np.asarray(nib.load(str(bad)).dataobj)[..., :3].copy())
    assert_fails(root, bad, "expected 4 modalities along the 4th axis, found 3 channel(s)")


def test_duplicate_case_ids(tmp_path):
    root = phantoms(tmp_path, "msd")
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"].append(dict(meta["training"][0]))
    meta["numTraining"] = 4
    (root / "dataset.json").write_text(json.dumps(meta))
    assert_fails(root, root / "dataset.json", "duplicate case ids: ['phantom_000']")
    folder = phantoms(tmp_path, "folder")
    shutil.copytree(folder / "phantom_000", folder / "PHANTOM_000")
    assert_fails(folder, folder, "duplicate case ids: ['PHANTOM_000', 'phantom_000']")


def test_unknown_layout(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "readme.md").write_text("no images here")
    assert_fails(tmp_path, tmp_path, "unknown layout")
    with pytest.raises(DatasetError, match="unknown layout 'dicom'"):
        load_dataset(phantoms(tmp_path, "msd"), layout="dicom")
    with pytest.raises(DatasetError, match="has neither 'channel_names'"):
        root = phantoms(tmp_path, "nnunet")
        (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0}}))
        load_dataset(root)


def test_skip_bad_patients_with_warning(tmp_path):
    root = phantoms(tmp_path, "nnunet", n=4)
    (root / "imagesTr" / "phantom_001_0003.nii.gz").unlink()
    bad = root / "labelsTr" / "phantom_003.nii.gz"
    label = np.asarray(nib.load(str(bad)).dataobj).copy()
    label[0, 0, 0] = 9
    rewrite(bad, label)
    with pytest.warns(DataWarning) as caught:
        dataset = load_dataset(root, on_error="skip")
    assert dataset.case_ids == ["phantom_000", "phantom_002"]
    assert [case for case, _ in dataset.skipped] == ["phantom_001", "phantom_003"]
    assert "missing modality 'FLAIR'" in dataset.skipped[0][1]
    assert "[9] are not declared" in dataset.skipped[1][1]
    assert sum("skipping patient" in str(w.message) for w in caught) == 2


def test_skip_never_hides_dataset_problems(tmp_path):
    root = phantoms(tmp_path, "nnunet", n=2)
    for case in ("phantom_000", "phantom_001"):
        (root / "imagesTr" / f"{case}_0000.nii.gz").write_text("broken")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        with pytest.raises(DatasetError, match="no usable patients"):
            load_dataset(root, on_error="skip")
    with pytest.raises(ValueError, match="on_error"):
        load_dataset(root, on_error="ignore")


@pytest.mark.parametrize("compress", [False, True])
def test_a_forged_header_is_refused_before_any_voxel_is_read(tmp_path, compress, monkeypatch):
    import gzip
    import time

    from training.data.nifti import read_header

    def forged(shape, name):
        img = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4))
        img.header.set_data_shape(shape)
        raw = img.header.binaryblock + b"\x00" * 4
        path = tmp_path / (name + (".nii.gz" if compress else ".nii"))
        path.write_bytes(gzip.compress(raw) if compress else raw)
        return path

    started = time.perf_counter()
    with pytest.raises(PatientError, match=r"header declares a volume of shape \(1500, 1500, 1000\) \(8.4 GiB as "
                                           r"float32\), above the limit of 2.0 GiB"):
        monkeypatch.setenv("STYLEPAIR_MAX_VOLUME_GB", "2")
        read_header(forged((1500, 1500, 1000), "huge"), "p1")
    with pytest.raises(PatientError, match=r"declares shape \(300, 300, 200\) \(72000000 bytes of voxel data\) but the "
                                           r"file holds only 0 bytes"):
        read_header(forged((300, 300, 200), "small"), "p2")
    assert time.perf_counter() - started < 1.0

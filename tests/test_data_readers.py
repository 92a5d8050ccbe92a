"""The three layouts read the same patients identically; detection, forcing, modality selection."""
import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from training.data import (PHANTOM_LABELS, PHANTOM_MODALITIES, DatasetError, PatientErrors, detect_layout, load_dataset,
                           write_phantom_dataset)
from training.data.phantoms import generate_phantom_patient

SHAPE = (16, 20, 8)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    return {layout: write_phantom_dataset(root / layout, n_patients=3, shape=SHAPE, seed=3, layout=layout)
            for layout in ("msd", "nnunet", "folder")}


@pytest.mark.parametrize("layout", ["msd", "nnunet", "folder"])
def test_layouts_read_back_the_written_patients(datasets, layout):
    assert detect_layout(datasets[layout]) == layout
    dataset = load_dataset(datasets[layout])
    assert dataset.layout == layout
    assert dataset.modalities == list(PHANTOM_MODALITIES)
    assert dataset.label_values == list(range(len(PHANTOM_LABELS)))
    assert dataset.label_names == list(PHANTOM_LABELS)
    assert dataset.case_ids == ["phantom_000", "phantom_001", "phantom_002"]
    expected = generate_phantom_patient(3, 1, SHAPE)
    patient = dataset.patient("phantom_001")
    assert patient.shape == SHAPE
    np.testing.assert_allclose(patient.affine, expected.affine)
    np.testing.assert_allclose(patient.spacing, np.diag(expected.affine)[:3])
    np.testing.assert_array_equal(patient.load_images(), expected.images)
    np.testing.assert_array_equal(patient.load_label(), expected.label)
    counts = np.bincount(expected.label.ravel(), minlength=len(PHANTOM_LABELS))
    assert patient.stats.label_voxels == {v: int(c) for v, c in enumerate(counts) if c}


def test_forced_layout_and_mismatch(datasets):
    assert load_dataset(datasets["nnunet"], layout="nnunet").layout == "nnunet"
    with pytest.raises(DatasetError, match="needs a 'modality' mapping"):
        load_dataset(datasets["nnunet"], layout="msd")
    with pytest.raises(DatasetError, match="an MSD or nnU-Net v2 dataset, not folder-per-patient"):
        load_dataset(datasets["msd"], layout="folder")


def test_modality_subset_and_order(datasets):
    for layout in ("msd", "nnunet", "folder"):
        dataset = load_dataset(datasets[layout], modalities=["FLAIR", "T1"])
        images = dataset.patients[0].load_images()
        full = generate_phantom_patient(3, 0, SHAPE).images
        assert dataset.modalities == ["FLAIR", "T1"]
        np.testing.assert_array_equal(images, full[[3, 0]])
    with pytest.raises(DatasetError, match=r"modalities \['PD'\] not in the dataset"):
        load_dataset(datasets["msd"], modalities=["PD"])


def test_folder_layout_discovers_modalities_and_labels(tmp_path, datasets):
    root = tmp_path / "brats_like"
    shutil.copytree(datasets["folder"], root)
    (root / "dataset.json").unlink()
    for patient in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        (patient / f"{patient.name}_seg.nii.gz").rename(patient / f"{patient.name}_Seg.nii.gz")
    # BraTS-style label values with a gap (0, 1, 2, 4) are discovered from the files.
    path = root / "phantom_000" / "phantom_000_Seg.nii.gz"
    img = nib.load(str(path))
    label = np.asarray(img.dataobj).copy()
    label[label == 5] = 4
    label[0, 0, 0] = 9
    nib.save(nib.Nifti1Image(label, img.affine), str(path))
    dataset = load_dataset(root)
    assert dataset.layout == "folder"
    assert dataset.modalities == sorted(PHANTOM_MODALITIES)
    assert 9 in dataset.label_values and dataset.label_values == sorted(dataset.label_values)
    assert dataset.label_names[0] == "background" and dataset.label_names[dataset.label_values.index(9)] == "label_9"


def test_folder_layout_ignores_undeclared_extra_modality(tmp_path, datasets):
    root = tmp_path / "extra"
    shutil.copytree(datasets["folder"], root)
    shutil.copy(root / "phantom_000" / "phantom_000_T1.nii.gz", root / "phantom_000" / "phantom_000_PD.nii.gz")
    with pytest.warns(UserWarning, match=r"ignoring file\(s\) of undeclared modalities \['PD'\]"):
        dataset = load_dataset(root)
    assert "PD" not in dataset.modalities and len(dataset.patients) == 3


def test_dataset_fingerprint_follows_files(tmp_path, datasets):
    root = tmp_path / "copy"
    shutil.copytree(datasets["nnunet"], root)
    first = load_dataset(root, check_voxels=False).fingerprint()
    assert load_dataset(root, check_voxels=False).fingerprint() == first
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps(meta, indent=4))
    assert load_dataset(root, check_voxels=False).fingerprint() != first


def test_voxel_checks_are_remembered_until_a_file_changes(tmp_path, datasets, monkeypatch):
    import training.data.validation as validation

    root = tmp_path / "memo"
    shutil.copytree(datasets["msd"], root)
    first = load_dataset(root)
    checked = []
    original = validation.check_voxels
    monkeypatch.setattr(validation, "check_voxels", lambda p, v: checked.append(p.case_id) or original(p, v))
    again = load_dataset(root)
    assert checked == [] and [p.stats for p in again.patients] == [p.stats for p in first.patients]
    label = root / "labelsTr" / "phantom_002.nii.gz"
    img = nib.load(str(label))
    data = np.asarray(img.dataobj).copy()
    data[0, 0, 0] = 9
    nib.save(nib.Nifti1Image(data, img.affine), str(label))
    with pytest.raises(PatientErrors, match=r"label values \[9\] are not declared"):
        load_dataset(root)
    assert checked == ["phantom_002"]


def _write_ct_case(folder, name, seed, ending):
    from training.data.nifti import write_nifti

    rng = np.random.default_rng(seed)
    ct = rng.uniform(-1200.0, 2500.0, size=(12, 10, 5)).astype(np.float32)
    label = (ct > 1000).astype(np.uint8)
    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    write_nifti(folder / "imagesTr" / f"{name}{ending}", ct, affine)
    write_nifti(folder / "labelsTr" / f"{name.replace('_0000', '')}{ending}", label, affine)
    return ct


def test_single_modality_ct_msd_and_uncompressed_nnunet(tmp_path):
    from training.data import PreprocessConfig, open_slice_cache

    msd = tmp_path / "ct_msd"
    ct = _write_ct_case(msd, "pelvis_01", 0, ".nii.gz")
    (msd / "dataset.json").write_text(json.dumps({
        "name": "Pelvis", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "bone"}, "numTraining": 1,
        "training": [{"image": "./imagesTr/pelvis_01.nii.gz", "label": "./labelsTr/pelvis_01.nii.gz"}]}))
    dataset = load_dataset(msd)
    assert dataset.layout == "msd" and dataset.modalities == ["CT"]
    np.testing.assert_array_equal(dataset.patients[0].load_images()[0], ct)
    cache = open_slice_cache(dataset, PreprocessConfig(resolution=12))
    assert cache.cases[0].intensity_window["CT"] == (-1000.0, 2000.0)
    assert cache.images.min() == -1.0 and cache.images.max() == 1.0

    nnunet = tmp_path / "ct_nnunet"
    _write_ct_case(nnunet, "pelvis_01_0000", 1, ".nii")
    (nnunet / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "bone": 1}, "numTraining": 1, "file_ending": ".nii"}))
    dataset = load_dataset(nnunet)
    assert dataset.layout == "nnunet" and dataset.case_ids == ["pelvis_01"]
    assert dataset.label_names == ["background", "bone"]


def test_singleton_fourth_axis_is_a_3d_volume(tmp_path, datasets):
    root = tmp_path / "singleton"
    shutil.copytree(datasets["nnunet"], root)
    for path in (root / "imagesTr" / "phantom_001_0002.nii.gz", root / "labelsTr" / "phantom_001.nii.gz"):
        img = nib.load(str(path))
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., None], img.affine), str(path))
    patient = load_dataset(root).patient("phantom_001")
    expected = generate_phantom_patient(3, 1, SHAPE)
    np.testing.assert_array_equal(patient.load_images(), expected.images)
    np.testing.assert_array_equal(patient.load_label(), expected.label)


def test_corrupt_voxel_check_record_is_ignored(tmp_path, datasets):
    root = tmp_path / "memo_broken"
    shutil.copytree(datasets["nnunet"], root, ignore=shutil.ignore_patterns(".stylepair_cache"))
    load_dataset(root)
    records = list((root / ".stylepair_cache").glob("voxel-checks-*.json"))
    assert len(records) == 1
    records[0].write_text("{not json")
    dataset = load_dataset(root)
    assert len(dataset.patients) == 3 and all(p.stats is not None for p in dataset.patients)
    assert json.loads(records[0].read_text())["format"] == 1  # rewritten


@pytest.mark.parametrize("escape", ["../outside/secret.nii.gz", "/etc/passwd", "imagesTr/../../outside/secret.nii.gz",
                                    "imagesTr/link.nii.gz"])
def test_msd_paths_must_stay_inside_the_dataset_folder(tmp_path, escape):
    root = write_phantom_dataset(tmp_path / "ds", n_patients=2, shape=(16, 16, 4))
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(root / "imagesTr" / "phantom_000.nii.gz", outside / "secret.nii.gz")
    (root / "imagesTr" / "link.nii.gz").symlink_to(outside / "secret.nii.gz")
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"][0]["image"] = escape
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"dataset.json.*training\[0\]\.image = .*(absolute path|leads outside)"):
        load_dataset(root)


def test_a_link_out_of_the_dataset_is_followed_only_when_enabled(tmp_path, monkeypatch):
    root = write_phantom_dataset(tmp_path / "ds", n_patients=2, shape=(16, 16, 4))
    store = tmp_path / "store"
    store.mkdir()
    shutil.move(root / "imagesTr" / "phantom_000.nii.gz", store / "phantom_000.nii.gz")
    (root / "imagesTr" / "phantom_000.nii.gz").symlink_to(store / "phantom_000.nii.gz")
    with pytest.raises(DatasetError, match="is a link that leads outside .*STYLEPAIR_FOLLOW_LINKS"):
        load_dataset(root)
    monkeypatch.setenv("STYLEPAIR_FOLLOW_LINKS", "1")
    assert load_dataset(root).case_ids == ["phantom_000", "phantom_001"]

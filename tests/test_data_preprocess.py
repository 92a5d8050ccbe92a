"""Intensity normalisation, aspect-preserving resize, slice headers and the inverse for labels."""
import numpy as np
import pytest

from training.data import (IntensityNorm, Patient, PreprocessConfig, load_preprocess_config, preprocess_patient,
                           restore_labels)
from training.data.nifti import write_nifti
from training.data.preprocess import intensity_window, label_indices, normalise, slice_geometry


def make_patient(tmp_path, images, label, spacing=(1.0, 1.0, 2.0), names=("T1", "CT")):
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (-10.0, 5.0, 3.0)
    files = []
    for name, volume in zip(names, images):
        files.append(tmp_path / f"case_{name}.nii.gz")
        write_nifti(files[-1], volume.astype(np.float32), affine)
    write_nifti(tmp_path / "case_seg.nii.gz", label.astype(np.uint8), affine)
    return Patient("case", files, tmp_path / "case_seg.nii.gz", affine, spacing, label.shape, list(names),
                   [None] * len(names))


def test_mr_percentiles_within_foreground_and_ct_window():
    volume = np.zeros((10, 10, 10), np.float32)
    volume[2:8, 2:8, 2:8] = np.linspace(1.0, 100.0, 216).reshape(6, 6, 6)
    lo, hi = intensity_window(volume, IntensityNorm("percentile", 0.0, 100.0, foreground_only=True))
    assert (lo, hi) == (1.0, 100.0)  # the zero background does not pull the low percentile down
    assert intensity_window(volume, IntensityNorm("percentile", 0.0, 100.0, foreground_only=False))[0] == 0.0
    scaled = normalise(volume, (lo, hi))
    assert scaled.min() == -1.0 and scaled.max() == 1.0 and scaled.dtype == np.float32
    config = PreprocessConfig()
    assert config.norm_for("CT") == IntensityNorm("window", -1000.0, 2000.0, False)
    assert config.norm_for("FLAIR").method == "percentile"
    ct_window = intensity_window(volume, config.norm_for("ct"))
    assert normalise(np.array([-2000.0, 500.0, 3000.0]), ct_window).tolist() == [-1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="lower < upper"):
        IntensityNorm("window", 10.0, -10.0)


def test_slice_geometry_keeps_aspect_with_padding():
    assert slice_geometry((40, 20), (1.0, 1.0), 32) == slice_geometry((40, 10), (1.0, 2.0), 32)
    geometry = slice_geometry((40, 20), (1.0, 1.0), 32)
    assert geometry.resized == (32, 16) and geometry.pad == (0, 8) and geometry.pixel_mm == 1.25


def test_preprocess_patient_arrays_header_and_inverse(tmp_path):
    x, y, z = 16, 12, 5
    label = np.zeros((x, y, z), np.int32)
    label[3:7, 2:5, 1:4] = 4  # BraTS-like value with a gap in the declared set
    label[10:14, 6:10, 2] = 1
    t1 = np.where(label > 0, 100.0, 10.0) + np.arange(x * y * z).reshape(x, y, z) * 0.01
    ct = np.full((x, y, z), 500.0)
    patient = make_patient(tmp_path, [t1, ct], label)
    config = PreprocessConfig(resolution=32)
    case = preprocess_patient(patient, [0, 1, 2, 4], config, first_row=7)
    assert case.images.shape == (z, 2, 32, 32) and case.images.dtype == np.float32
    assert case.labels.shape == (z, 32, 32) and case.labels.dtype == np.uint8
    assert -1.0 <= case.images.min() and case.images.max() <= 1.0
    assert set(np.unique(case.labels)) == {0, 1, 3}  # value 4 -> index 3
    info = case.info
    assert info.resized == (32, 24) and info.pad == (0, 4) and info.first_row == 7
    assert info.slice_spacing == (0.5, 0.5, 2.0)
    assert info.intensity_window["CT"] == (-1000.0, 2000.0)
    assert np.all(case.images[:, :, :, :4] == -1.0) and np.all(case.labels[:, :, :4] == 0)  # padding
    np.testing.assert_allclose(case.images[:, 1, :, 4:28], 0.0, atol=1e-6)  # 500 HU in a -1000..2000 window
    # The slice affine puts the lesion at the same world position as the original affine does.
    def centroid_mm(labels, affine):
        index = np.argwhere(labels == labels.max()).mean(axis=0)
        return (affine @ np.append(index, 1.0))[:3]
    stacked = case.labels.transpose(1, 2, 0)
    np.testing.assert_allclose(centroid_mm(stacked, np.array(info.slice_affine)), centroid_mm(label, patient.affine),
                               atol=1e-6)
    np.testing.assert_array_equal(restore_labels(case.labels, info), label_indices(label, [0, 1, 2, 4]))


def test_label_indices_reject_undeclared_values():
    np.testing.assert_array_equal(label_indices(np.array([0, 4, 2]), [0, 2, 4]), [0, 2, 1])
    with pytest.raises(ValueError, match=r"\[3\] are not among"):
        label_indices(np.array([0, 3]), [0, 2, 4])


def test_yaml_presets_and_overrides(tmp_path):
    for name in ("phantom", "brats", "ct"):
        assert isinstance(load_preprocess_config(name), PreprocessConfig)
    ct = load_preprocess_config("ct", resolution=64)
    assert ct.resolution == 64 and ct.norm_for("T2") == IntensityNorm("window", 0.0, 1900.0, False)
    assert ct.cache_key(["CT", "T2"]) != load_preprocess_config("ct").cache_key(["CT", "T2"])
    assert ct.cache_key(["CT"]) == PreprocessConfig(**{**ct.__dict__, "drop_end_slices": 0}).cache_key(["CT"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("resolution: 32\nresoltion: 64\n")
    with pytest.raises(ValueError, match=r"bad.yaml: resoltion: unknown key \(known keys: cache_dtype"):
        load_preprocess_config(bad)
    bad.write_text("ct_norm: {method: window, lower: 40, upper: -160}\n")
    with pytest.raises(ValueError, match="bad.yaml: ct_norm: IntensityNorm needs lower < upper"):
        load_preprocess_config(bad)
    soft_tissue = load_preprocess_config("ct", ["ct_norm.lower=-160", "ct_norm.upper=240", "modality_norm.T2.upper=900"])
    assert soft_tissue.ct_norm == IntensityNorm("window", -160.0, 240.0, False)
    assert soft_tissue.norm_for("T2") == IntensityNorm("window", 0.0, 900.0, False)
    with pytest.raises(ValueError, match=r"ct.yaml \+ --set: ct_norm.uper: unknown key"):
        load_preprocess_config("ct", ["ct_norm.uper=240"])
    with pytest.raises(FileNotFoundError, match="presets"):
        load_preprocess_config("nope")

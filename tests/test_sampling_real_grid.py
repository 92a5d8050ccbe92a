"""Synthetic patients written like the real ones: the real in-plane grid, orientation, voxel types,
qform/sform codes and a descrip naming stylepair (``--grid real``, the default), or the generator's
frame (``--grid generator``)."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from training.sampling.cli_sample import main as sample_main
from training.cli_train import main as train_main
from training.data.phantoms import write_phantom_dataset

from tiny import TINY_GAN_ARGS

TINY = TINY_GAN_ARGS + ["--batch-gpu", "4", "--kimg", "0.004", "--metrics", "none"]
LPS = np.array([[-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)


def restored_as(real_root, out_root, kind: str):
    """A copy of an nnU-Net phantom dataset stored as ``kind``: 'lps-int16' (voxel axes flipped to LPS,
    images as int16 "HU", sform code 2 = aligned) or 'oblique-float' (the world rotated 20 degrees about
    z, float32, codes 1)."""
    out_root.mkdir()
    (out_root / "dataset.json").write_bytes((real_root / "dataset.json").read_bytes())
    for path in sorted(real_root.glob("*Tr/*.nii.gz")):
        image = nib.load(path)
        data, affine = np.asarray(image.dataobj), image.affine
        is_label = path.parent.name == "labelsTr"
        if kind == "lps-int16":
            X, Y = data.shape[:2]
            flip = LPS.copy()
            flip[:2, 3] = [X - 1, Y - 1]
            data, affine = data[::-1, ::-1], affine @ flip                       # same world, LPS voxel axes
            data = data.astype(np.int16) if is_label else np.rint(data - 1000).astype(np.int16)   # 0 -> -1000 "HU"
            codes = (1, 2)
        else:
            angle = np.deg2rad(20)
            rotation = np.eye(4)
            rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
            affine, data, codes = rotation @ affine, data.astype(np.uint8 if is_label else np.float32), (1, 1)
        copy = nib.Nifti1Image(np.ascontiguousarray(data), affine)
        copy.set_qform(affine, code=codes[0])
        copy.set_sform(affine, code=codes[1])
        (out_root / path.parent.name).mkdir(exist_ok=True)
        nib.save(copy, out_root / path.parent.name / path.name)
    return out_root


def header(path):
    image = nib.load(path)
    return {"shape": image.shape[:2], "spacing": tuple(round(float(z), 4) for z in image.header.get_zooms()[:2]),
            "orientation": nib.aff2axcodes(image.affine), "dtype": image.get_data_dtype().name,
            "codes": (int(image.header["qform_code"]), int(image.header["sform_code"])),
            "in-plane axes": np.round(image.affine[:3, :2], 4).tolist()}


@pytest.mark.parametrize("kind", ["lps-int16", "oblique-float"])
def test_synthetic_patients_keep_the_real_grid_and_header(tmp_path, kind):
    phantoms = write_phantom_dataset(tmp_path / "phantoms", n_patients=2, shape=(20, 14, 6), layout="nnunet")
    real = restored_as(phantoms, tmp_path / kind, kind)
    assert train_main(TINY + ["--variant", "baseline", "--data", str(real), "--out", str(tmp_path / "run")]) == 0
    assert sample_main(["--gan", str(tmp_path / "run"), "--patients", "1", "--out", str(tmp_path / "syn"),
                        "--keep-empty", "--quiet"]) == 0
    real_image, real_label = header(real / "imagesTr" / "phantom_000_0000.nii.gz"), header(real / "labelsTr" / "phantom_000.nii.gz")
    syn_image = header(tmp_path / "syn" / "imagesTr" / "SYN_0000_0000.nii.gz")
    syn_label = header(tmp_path / "syn" / "labelsTr" / "SYN_0000.nii.gz")
    assert syn_image == real_image and syn_label == real_label
    descrip = bytes(nib.load(tmp_path / "syn" / "imagesTr" / "SYN_0000_0000.nii.gz").header["descrip"])
    assert descrip.startswith(b"stylepair synthetic baseline baseline:")

    assert sample_main(["--gan", str(tmp_path / "run"), "--patients", "1", "--out", str(tmp_path / "frame"),
                        "--keep-empty", "--quiet", "--grid", "generator"]) == 0
    frame = header(tmp_path / "frame" / "imagesTr" / "SYN_0000_0000.nii.gz")
    assert (frame["shape"], frame["orientation"], frame["dtype"], frame["codes"]) == ((16, 16), ("R", "A", "S"),
                                                                                      "float32", (1, 1))


def test_integer_images_are_rounded_and_clipped_to_their_type():
    from training.data.nifti import cast_voxels

    values = np.array([-40000.4, -1.6, 2.5, 3.49, 70000.0])
    assert cast_voxels(values, "int16").tolist() == [-32768, -2, 2, 3, 32767]
    assert cast_voxels(values, "uint8").tolist() == [0, 0, 2, 3, 255]
    assert cast_voxels(values, "float32").dtype == np.float32


def test_inspect_suggests_a_preset_and_a_resolution_and_prints_the_stored_orientation(tmp_path, capsys):
    from training.data.cli import main as data_main

    phantoms = write_phantom_dataset(tmp_path / "phantoms", n_patients=3, shape=(40, 52, 4), layout="nnunet")
    for kind, preset in (("lps-int16", "preset ct: T1, T1ce, T2, FLAIR reach -500 and below, Hounsfield units"),
                         ("oblique-float", "preset brats (MR")):
        assert data_main(["inspect", str(restored_as(phantoms, tmp_path / kind, kind))]) == 0
        text = capsys.readouterr().out
        assert preset in text and "--resolution 64 (median in-plane side 52 px" in text
        assert f"stored      orientation {'LPS' if kind == 'lps-int16' else 'RAS'} (3)" in text
        assert "a study with the default splits (20 % test, 5 folds) 6," in text and "this dataset has 3" in text


def test_suggested_resolution_is_the_nearest_power_of_two_within_the_generators_range():
    from training.data.summary import suggested_resolution

    assert [suggested_resolution(s) for s in (5, 90, 109, 181, 200, 256, 4000)] == [16, 64, 128, 128, 256, 256, 512]

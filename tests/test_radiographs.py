"""Radiographs: PNG/DICOM readers, the radiograph layout and phantom, foreign-object insertion, instances."""
import json

import numpy as np
import pytest
from PIL import Image

from training.data import load_dataset
from training.data.cli import main as data_main
from training.data.errors import PatientErrors
from training.data.nifti import read_header, read_voxels
from training.data.summary import objects_per_class
from training.data.phantoms_radiograph import (INSTANCE_LABELS, RADIOGRAPH_LABELS, generate_radiograph,
                                               write_radiograph_dataset)

from tiny import TINY_GAN_ARGS

LABEL = {name: i for i, name in enumerate(RADIOGRAPH_LABELS)}


def _write_dicom(path, pixels, photometric, spacing=(0.2, 0.3), bits=12):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.PixelSpacing = [str(v) for v in spacing]
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def test_png_of_8_and_16_bits_and_palette_masks_are_one_slice_volumes(tmp_path):
    rng = np.random.default_rng(0)
    eight, sixteen = rng.integers(0, 256, (5, 7)), rng.integers(0, 65536, (5, 7))
    Image.fromarray(eight.astype(np.uint8), mode="L").save(tmp_path / "a.png")
    Image.fromarray(sixteen.astype(np.uint16)).save(tmp_path / "b.png")
    palette = Image.fromarray(rng.integers(0, 4, (5, 7)).astype(np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    palette.save(tmp_path / "m.png")
    for name, expected in (("a.png", eight), ("b.png", sixteen), ("m.png", np.asarray(palette))):
        header = read_header(tmp_path / name, "c", spacing_2d=(0.5, 0.25))
        assert header.shape == (5, 7, 1) and header.spacing == (0.5, 0.25, 1.0)
        np.testing.assert_array_equal(read_voxels(header, "c")[:, :, 0], expected)   # row x, column y


def test_dicom_monochrome1_is_inverted_and_its_pixel_spacing_read(tmp_path):
    stored = np.arange(12, dtype=np.uint16).reshape(3, 4) * 300   # 12-bit values
    _write_dicom(tmp_path / "m1.dcm", stored, "MONOCHROME1")
    _write_dicom(tmp_path / "m2.dcm", stored, "MONOCHROME2")
    m1, m2 = read_header(tmp_path / "m1.dcm", "c"), read_header(tmp_path / "m2.dcm", "c")
    assert m1.shape == (3, 4, 1) and m1.spacing == pytest.approx((0.2, 0.3, 1.0))
    np.testing.assert_array_equal(read_voxels(m2, "c")[:, :, 0], stored)
    np.testing.assert_array_equal(read_voxels(m1, "c")[:, :, 0], 4095 - stored)      # white = low values in M1


def _layout(root, n=3):
    write_radiograph_dataset(root, n_images=n, shape=(32, 32), seed=4, object_fraction=1.0)
    return root


def test_broken_radiographs_are_named_with_their_problem(tmp_path):
    root = _layout(tmp_path / "cxr", n=5)
    (root / "images" / "cxr_000.png").write_bytes((root / "images" / "cxr_000.png").read_bytes()[:60])  # truncated
    (root / "images" / "cxr_001.png").unlink()
    (root / "images" / "cxr_001.dcm").write_text("not a dicom")
    Image.new("RGB", (32, 32)).save(root / "images" / "cxr_002.png")
    Image.fromarray(np.zeros((16, 32), np.uint8), mode="L").save(root / "masks" / "cxr_003.png")
    Image.fromarray(np.full((32, 32), 42, np.uint8), mode="L").save(root / "masks" / "cxr_004.png")
    with pytest.raises(PatientErrors) as errors:
        load_dataset(root)
    text = str(errors.value)
    for expected in ("images/cxr_000.png", "corrupt", "images/cxr_001.dcm: not a readable DICOM file",
                     "images/cxr_002.png: colour PNG", "masks/cxr_003.png: shape (16, 32, 1) disagrees",
                     "masks/cxr_004.png: label values [42] are not declared"):
        assert expected in text, (expected, text)


def test_inspect_shows_bit_depth_photometric_interpretation_and_objects_per_class(tmp_path, capsys):
    assert data_main(["phantoms", str(tmp_path / "cxr"), "--kind", "radiograph", "--patients", "6", "--shape", "32",
                      "32"]) == 0
    capsys.readouterr()
    assert data_main(["inspect", str(tmp_path / "cxr")]) == 0
    text = capsys.readouterr().out
    truth = {name: 0 for name in INSTANCE_LABELS}
    for i in range(6):
        for _, name in generate_radiograph(0, i, (32, 32)).objects:
            truth[name] += 1
    assert "layout      radiograph" in text and "images      16-bit MONOCHROME2 (6)" in text
    assert "objects     per instance class (instance maps)" in text and "stored      PNG, images uint16" in text
    for name, count in truth.items():
        assert next(line.split() for line in text.splitlines() if line.split()[:1] == [name])[1] == str(count)
    assert "suggest     preset radiograph" in text


def test_the_phantom_s_anatomy_is_consistent_and_every_object_is_one_instance_of_one_class():
    for index in range(6):
        image = generate_radiograph(3, index, (96, 96), object_fraction=1.0)
        labels, rows, columns = image.labels, *np.indices((96, 96))
        centre = {name: (rows[labels == LABEL[name]].mean(), columns[labels == LABEL[name]].mean())
                  for name in ("lung", "heart", "trachea", "clavicle")}
        assert centre["trachea"][0] < centre["heart"][0] and centre["clavicle"][0] < centre["lung"][0]
        assert centre["heart"][1] > 48                      # the heart lies over the left lung: the image's right
        body = np.isin(labels, [LABEL[n] for n in RADIOGRAPH_LABELS[1:]])
        assert body[48, 48] and not body[0, 0]              # soft tissue in the middle, air in the corner
        assert image.pixels.dtype == np.uint16 and image.pixels.max() <= 4095
        assert image.pixels[labels == LABEL["lung"]].mean() < image.pixels[labels == LABEL["heart"]].mean()
        assert len(image.objects) >= 1
        for object_id, name in image.objects:
            assert set(np.unique(labels[image.instances == object_id])) == {LABEL[name]}
        np.testing.assert_array_equal(generate_radiograph(3, index, (96, 96), 1.0).pixels, image.pixels)


def test_foreign_objects_go_only_where_their_anatomy_allows_into_radiographs_without_real_objects(tmp_path):
    from procedural import LabelSet, build_synthesiser
    from training.sampling.procedural_sampling import volume_patient

    dataset = load_dataset(write_radiograph_dataset(tmp_path / "cxr", n_images=8, shape=(64, 64), seed=1))
    patients = [volume_patient(dataset, c) for c in dataset.case_ids]
    healthy = {p.case_id for p in patients if not np.isin(p.labels, [LABEL["wire"], LABEL["device"]]).any()}
    assert 0 < len(healthy) < len(patients)
    synthesiser = build_synthesiser("shape-insertion", "configs/procedural/cxr-foreign-objects.yaml", patients,
                                    LabelSet(tuple(dataset.label_names), tuple(dataset.label_values)),
                                    dataset.modalities)
    for j in range(12):
        made = synthesiser.make(j, np.random.default_rng([7, j]))
        assert set(made.sources) <= healthy                   # raw material: radiographs without real objects
        source = next(p for p in patients if p.case_id == made.sources[0]).labels
        for record in made.objects:
            voxels = made.instances == record["id"]
            assert set(np.unique(made.labels[voxels])) == {LABEL[record["label"]]}
            under = set(np.unique(source[voxels]))
            if record["kind"] == "line" and record["label"] == "device":
                assert under == {LABEL["lung"]}               # clips: inside the lungs
            elif record["kind"] == "rectangle":
                assert under == {LABEL["body"]}               # pacemaker boxes: inside the chest wall
            elif record["kind"] == "wire":
                assert LABEL["heart"] in under                # wires end in the heart
            elif record["kind"] == "line":
                assert LABEL["trachea"] in under              # tubes run down the trachea


def test_synthetic_radiographs_are_written_as_png_with_their_instances(tmp_path):
    from training.sampling.procedural_sampling import synthesise_to_directory

    dataset = load_dataset(write_radiograph_dataset(tmp_path / "cxr", n_images=6, shape=(48, 48), seed=2))
    synthesise_to_directory(dataset, dataset.case_ids, "shape-insertion", "configs/procedural/cxr-foreign-objects.yaml",
                            4, 0, tmp_path / "syn", progress=False)
    written = load_dataset(tmp_path / "syn")
    assert json.loads((tmp_path / "syn" / "dataset.json").read_text())["file_ending"] == ".png"
    assert written.label_names == dataset.label_names and written.patients[0].spacing == dataset.patients[0].spacing
    log = json.loads((tmp_path / "syn" / "synthesis.json").read_text())
    assert written.instance_labels == list(INSTANCE_LABELS)            # read back by the nnU-Net reader
    for patient, record in zip(written.patients, log["patients"]):
        assert objects_per_class(patient, written) == {name: sum(o["label"] == name for o in record["objects"])
                                                       for name in INSTANCE_LABELS}
    for record in log["patients"]:
        labels = np.asarray(Image.open(tmp_path / "syn" / "labelsTr" / f"{record['case_id']}.png"))
        instances = np.asarray(Image.open(tmp_path / "syn" / "instancesTr" / f"{record['case_id']}.png"))
        ids = sorted(set(np.unique(instances)) - {0})
        assert ids == [o["id"] for o in record["objects"]] and ids       # every object kept its id
        for obj in record["objects"]:
            assert set(np.unique(labels[instances == obj["id"]])) == {LABEL[obj["label"]]}
            assert int((instances == obj["id"]).sum()) == obj["voxels"]


def test_average_precision_of_a_hand_made_case_is_coco_s():
    """Two reference objects; detections: one hit (score 0.9), a false one (0.7), the other hit (0.55).
    Precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1; COCO interpolates on 101 recall points: 51 at
    precision 1, 50 at 2/3."""
    from segmentation.study.instances import InstanceEvaluation

    reference = np.zeros((20, 20, 1), np.uint8)
    reference[2:6, 2:6] = reference[12:16, 12:16] = 1
    wire = np.full((20, 20, 1), 0.1)
    wire[2:6, 2:6], wire[2:6, 12:16], wire[12:16, 12:16] = 0.9, 0.7, 0.55
    evaluation = InstanceEvaluation(["wire"], [1])
    evaluation.add_case("a", np.stack([1 - wire, wire]), reference)
    per_class, per_case = evaluation.scores()
    expected = (51 * 1.0 + 50 * 2 / 3) / 101
    assert per_class["wire"]["ap50"] == pytest.approx(expected) and per_class["wire"]["map"] == pytest.approx(expected)
    assert per_class["foreground"]["map"] == pytest.approx(expected)
    assert per_case["a"]["wire"] == {"object_sensitivity": 1.0, "object_false_positives": 1.0}
    shifted = np.full((20, 20, 1), 0.1)
    shifted[2:7, 2:6] = shifted[7, 2:4] = 0.9                 # 16 + 6 pixels: IoU 16/22 = 0.73 with the first object
    evaluation = InstanceEvaluation(["wire"], [1])
    evaluation.add_case("b", np.stack([1 - shifted, shifted]), reference)
    per_class, per_case = evaluation.scores()
    assert per_class["wire"]["ap50"] == pytest.approx(51 / 101)                      # recall 1/2 at precision 1
    assert per_class["wire"]["map"] == pytest.approx(5 / 10 * 51 / 101)           # a hit at IoU 0.5 ... 0.7
    assert per_case["b"]["wire"] == {"object_sensitivity": 0.5, "object_false_positives": 0.0}


def test_a_micro_study_on_radiographs_compares_real_synthetic_only_and_both_by_map(tmp_path):
    from segmentation.report.score_table import ScoreTableConfig, load_score_table
    from segmentation.study.runner import run_study
    from segmentation.study.study_config import study_config_from_dict

    config = study_config_from_dict({
        "name": "cxr", "seed": 0,
        "datasets": [{"name": "cxr", "path": "phantoms", "preprocess": {"resolution": 32},
                      "phantoms": {"kind": "radiograph", "n_patients": 12, "shape": [32, 32, 1]}}],
        "splits": {"n_folds": 2, "test_fraction": 0.25, "folds": [0]},
        "arms": [{"name": "objects", "procedural": "shape-insertion", "raw_material": "fold",
                  "config": "configs/procedural/cxr-foreign-objects.yaml"}],
        "k": [3], "n_real": [None, 0], "unet": {"channels": [8, 16], "strides": [2], "num_res_units": 0},
        "train": {"iterations": 4, "batch_size": 4, "val_every": 2}, "metrics": ["dice", "map"]})
    assert len(run_study(config, tmp_path / "results", device="cpu", progress=False, threads=1).ran) == 3
    runs = [json.loads(p.read_text()) for p in (tmp_path / "results" / "runs").glob("*.json")]
    assert sorted((r["config"]["run"]["arm"], str(r["config"]["run"]["n_real_requested"])) for r in runs) == [
        ("objects", "0"), ("objects", "None"), ("real", "None")]          # real-only, synthetic-only, both
    only_synthetic = next(r for r in runs if r["config"]["run"]["n_real_requested"] == 0)
    assert only_synthetic["slices"]["train_real"] == 0 and only_synthetic["slices"]["train_synthetic"] > 0
    test_rows = [c for c in only_synthetic["cases"] if c["case"] == "(test set)"]
    assert {c["class"] for c in test_rows} == {"wire", "device", "foreground"}
    by_run = ("arm", "n_synthetic", "n_real")
    table = load_score_table(tmp_path / "results" / "cases.csv", ScoreTableConfig(metric="map", condition_columns=by_run))
    assert table.n_rows == 3 and table.scores.shape == (1, 3)         # one test-set value per run, by map
    dice = load_score_table(tmp_path / "results" / "cases.csv", ScoreTableConfig(metric="dice", condition_columns=by_run))
    assert dice.n_rows == 3 * 3                               # per test case, the test-set rows left out


def test_cut_and_paste_copies_the_real_annotated_objects_into_other_radiographs(tmp_path):
    from procedural import LabelSet, build_synthesiser
    from training.sampling.procedural_sampling import volume_patient

    dataset = load_dataset(write_radiograph_dataset(tmp_path / "cxr", n_images=8, shape=(64, 64), seed=1))
    patients = [volume_patient(dataset, c) for c in dataset.case_ids]
    synthesiser = build_synthesiser("cut-and-paste", "configs/procedural/cxr-cut-and-paste.yaml", patients,
                                    LabelSet(tuple(dataset.label_names), tuple(dataset.label_values)),
                                    dataset.modalities)
    pasted = 0
    for j in range(8):
        made = synthesiser.make(j, np.random.default_rng([3, j]))
        host = next(p for p in patients if p.case_id == made.sources[0])
        for record in made.objects:
            voxels = made.instances == record["id"]
            assert set(np.unique(made.labels[voxels])) <= {LABEL["wire"], LABEL["device"]}
            assert np.isin(host.labels[voxels], [LABEL[n] for n in ("body", "lung", "heart")]).mean() >= 0.9
            pasted += 1
    assert pasted > 0


def test_a_gan_trains_on_radiographs_and_samples_them_back_as_png_on_the_real_grid(tmp_path):
    from training.cli_train import main as train_main
    from training.sampling.cli_sample import main as sample_main

    data = write_radiograph_dataset(tmp_path / "cxr", n_images=3, shape=(40, 48), seed=5)
    assert train_main(TINY_GAN_ARGS + ["--variant", "baseline", "--data", str(data), "--out", str(tmp_path / "run"),
                                       "--preprocess", "radiograph", "--kimg", "0.004", "--metrics", "none"]) == 0
    assert sample_main(["--gan", str(tmp_path / "run"), "--patients", "2", "--out", str(tmp_path / "syn")]) == 0
    written, real = load_dataset(tmp_path / "syn"), load_dataset(data)
    assert [p.shape for p in written.patients] == [(40, 48, 1)] * 2            # the radiographs' own size
    assert written.patients[0].spacing == pytest.approx(real.patients[0].spacing)
    assert sorted(p.name for p in (tmp_path / "syn" / "imagesTr").iterdir()) == ["SYN_0000_0000.png",
                                                                                  "SYN_0001_0000.png"]
    assert np.asarray(Image.open(tmp_path / "syn" / "imagesTr" / "SYN_0000_0000.png")).dtype == np.uint16

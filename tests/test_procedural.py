"""The procedural synthesisers on phantom patients: where they put things, what they change, the
statistics they reproduce, determinism, clear refusals, the files they write and the study arm."""
import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from procedural import LabelSet, ProceduralError, VolumePatient, build_synthesiser, load_synthesiser_config
from procedural.base import body_mask
from procedural.lesion_insertion import estimate_contrast
from training.data import PHANTOM_LABELS, PHANTOM_MODALITIES, generate_phantom_patient

LABELS = LabelSet(PHANTOM_LABELS, tuple(range(len(PHANTOM_LABELS))))
LESIONS = {"region": ["white_matter", "grey_matter"],
           "layers": [{"label": "oedema", "scale": 1.0}, {"label": "core", "scale": 0.5}]}


def phantoms(n=4, shape=(48, 48, 16), seed=0):
    patients = []
    for i in range(n):
        p = generate_phantom_patient(seed, i, shape)
        patients.append(VolumePatient(f"p{i}", p.images, p.label.astype(np.int32), p.affine))
    return patients


@pytest.fixture(scope="module")
def patients():
    return phantoms()


def make(name, config, patients, index=0, seed=0):
    return build_synthesiser(name, config, patients, LABELS, PHANTOM_MODALITIES).make(
        index, np.random.default_rng([seed, index]))


def test_inserted_lesions_lie_in_their_region_and_only_the_blended_lesion_changes(patients):
    for index in range(4):
        source = patients[index % len(patients)]
        out = make("lesion-insertion", {**LESIONS, "lesions": [2, 2], "blend_mm": 2.0}, patients, index)
        region = np.isin(source.labels, [2, 3]) & body_mask(source.images)
        new_lesion = (out.labels != source.labels)
        assert new_lesion.any() and np.all(region[new_lesion])
        assert set(np.unique(out.labels[new_lesion])) <= {4, 5}
        changed = np.any(out.images != source.images, axis=0)
        assert np.all(region[changed])  # the blend never reaches outside the region
        support = ndimage.binary_dilation(out.instances > 0, iterations=4)
        assert np.all(support[changed]) and np.all(changed[out.instances > 0])
        assert {o["id"] for o in out.objects} == set(np.unique(out.instances)) - {0}
        assert out.sources == (source.case_id,)


def test_inserted_lesion_contrast_matches_the_estimate_from_real_lesions(patients):
    estimate = estimate_contrast(patients, [4, 5], [2, 3])
    assert set(estimate) == {4, 5} and estimate[4].shape == (4, 2)
    config = {**LESIONS, "texture": 0.0, "blend_mm": 0.0, "contrast_spread": 0.0, "lesions": [1, 1]}
    for index in range(3):
        source = patients[index % len(patients)]
        out = make("lesion-insertion", config, patients, index)
        for value in (4, 5):
            where = (out.labels == value) & (source.labels != out.labels)
            if where.sum() < 3:
                continue
            ratio = out.images[:, where].mean(1) / source.images[:, where].mean(1)
            np.testing.assert_allclose(ratio, estimate[value][:, 0], rtol=1e-4)


def test_label_to_image_reproduces_label_statistics_when_fitted_and_varies_them_when_random(patients):
    fitted = {"mode": "fitted", "perturbation": 0.0, "bias_strength": 0.0, "blur_mm": [0, 0], "noise": [0, 0]}
    source = patients[0]
    out = make("label-to-image", fitted, patients)
    np.testing.assert_array_equal(out.labels, source.labels)
    width = np.ptp(source.images.reshape(4, -1), axis=1)
    for value in (1, 2, 3):
        inside = source.labels == value
        error = np.abs(out.images[:, inside].mean(1) - source.images[:, inside].mean(1)) / width
        assert np.all(error < 0.08), (value, error)
    random_means = [make("label-to-image", {"mode": "random"}, patients, index=4 * j)  # same source, new draws
                    .images[0, source.labels == 3].mean() for j in range(5)]
    assert np.std(random_means) > 0.05 * width[0]
    air = ~body_mask(source.images)
    assert np.all(out.images[:, air] == source.images[:, air].min())


def test_label_to_image_splits_labels_and_deforms_the_map(patients):
    out = make("label-to-image", {"split_labels": ["core"], "elastic_mm": 4.0}, patients, index=1)
    source = patients[1]
    assert out.labels.shape == source.labels.shape and not np.array_equal(out.labels, source.labels)
    assert set(np.unique(out.labels)) <= set(range(6))


def test_cut_and_paste_keeps_the_shape_of_the_copied_object(patients):
    config = {"objects": ["oedema", "core"], "into": ["white_matter", "grey_matter"], "count": [1, 1],
              "scale": [1.0, 1.0], "rotate_deg": 0, "blend_mm": 0.0, "min_inside": 0.5}
    synthesiser = build_synthesiser("cut-and-paste", config, patients, LABELS, PHANTOM_MODALITIES)
    donors = {(o.donor, o.mask.tobytes(), o.mask.shape): o for o in synthesiser.objects}
    for index in range(4):
        out = synthesiser.make(index, np.random.default_rng([0, index]))
        if not out.objects:
            continue
        pasted = out.instances == 1
        box = ndimage.find_objects(pasted.astype(int))[0]
        donor = [o for (d, _, _), o in donors.items() if d == out.objects[0]["donor"]
                 and o.mask.sum() == pasted.sum()]
        assert any(np.array_equal(o.mask[tuple(slice(*_tight(o.mask, a)) for a in range(3))], pasted[box])
                   for o in donor)
        assert out.objects[0]["donor"] != patients[index].case_id and out.sources[1] == out.objects[0]["donor"]


def _tight(mask, axis):
    other = tuple(a for a in range(3) if a != axis)
    where = np.flatnonzero(mask.any(axis=other))
    return where[0], where[-1] + 1


def test_shapes_are_placed_inside_their_region_with_instances(patients):
    objects = [{"kind": k, "label": "core", "inside": ["white_matter"], "size_mm": [10, 30], "slices": [2, 4]}
               for k in ("disc", "ring", "rectangle", "polygon", "line", "wire", "grid")]
    for index in range(3):
        out = make("shape-insertion", {"objects": objects, "blend_mm": 0.0}, patients, index)
        source = patients[index % len(patients)]
        written = out.instances > 0
        assert written.any() and np.all(source.labels[written] == 3)
        assert np.all(out.labels[written] == 5)
        changed = np.any(out.images != source.images, axis=0)
        assert np.array_equal(changed, written)
        assert [o["kind"] for o in out.objects][:1] == ["disc"]


def test_synthesis_is_deterministic_by_seed(patients):
    for name, config in (("lesion-insertion", LESIONS), ("label-to-image", None),
                         ("cut-and-paste", {"objects": ["core"], "into": ["white_matter"]})):
        a, b = make(name, config, patients, 2, seed=5), make(name, config, patients, 2, seed=5)
        c = make(name, config, patients, 2, seed=6)
        assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
        assert not np.array_equal(a.images, c.images)


def test_bad_configs_and_sources_are_refused_clearly(patients, tmp_path):
    with pytest.raises(ProceduralError, match=r"region: the dataset has no label 'liver'; its labels are \['background'"):
        make("lesion-insertion", {**LESIONS, "region": ["liver"]}, patients)
    with pytest.raises(ProceduralError, match="too small for a lesion"):
        make("lesion-insertion", {**LESIONS, "region": ["csf"], "radius_mm": [400, 500]}, patients)
    healthy = [VolumePatient(p.case_id, p.images, np.where(p.labels >= 4, 3, p.labels), p.affine) for p in patients]
    with pytest.raises(ProceduralError, match="no real lesions of .*set contrast: fixed"):
        make("lesion-insertion", LESIONS, healthy)
    out = make("lesion-insertion", {**LESIONS, "contrast": "fixed"}, healthy)  # healthy patients get lesions
    assert (out.labels == 4).any()
    with pytest.raises(ProceduralError, match="no object of"):
        make("cut-and-paste", {"objects": ["core"], "into": ["white_matter"]}, healthy)
    with pytest.raises(ProceduralError, match=r"mean_range: range \[low, high\] needs low <= high"):
        load_synthesiser_config("label-to-image", {"mean_range": [0.9, 0.1]})
    with pytest.raises(ProceduralError, match=r"split_clusters: expected an integer \(a whole number\), got 2.5"):
        load_synthesiser_config("label-to-image", {"split_clusters": 2.5})
    with pytest.raises(ProceduralError, match="colour: unknown key"):
        load_synthesiser_config("label-to-image", {"colour": 1})
    with pytest.raises(ProceduralError, match="unknown procedural synthesiser 'gan-like'"):
        load_synthesiser_config("gan-like", None)


def test_timing_per_patient_is_well_under_a_second():
    import time

    patients = phantoms(3, shape=(64, 64, 24))
    synthesiser = build_synthesiser("label-to-image", None, patients, LABELS, PHANTOM_MODALITIES)
    started = time.process_time()
    for j in range(3):
        synthesiser.make(j, np.random.default_rng([0, j]))
    assert (time.process_time() - started) / 3 < 1.0


def test_sample_patients_procedural_writes_resumes_and_refuses_other_settings(tmp_path, capsys):
    from training.sampling.cli_sample import main
    from training.data import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "ph", n_patients=4, shape=(32, 32, 8))
    (tmp_path / "cases.txt").write_text("phantom_000\nphantom_001  # training patients only\n")
    config = tmp_path / "lesions.yaml"
    config.write_text(json.dumps(LESIONS))
    base = ["--procedural", "lesion-insertion", "--from", str(data), "--config", str(config), "--cases",
            str(tmp_path / "cases.txt"), "--quiet"]
    assert main(base + ["--patients", "3", "--out", str(tmp_path / "out"), "--preview"]) == 0
    out = tmp_path / "out"
    log = json.loads((out / "synthesis.json").read_text())
    assert log["synthesiser"] == "lesion-insertion" and log["source"]["cases"] == ["phantom_000", "phantom_001"]
    assert [p["case_id"] for p in log["patients"]] == ["SYN_0000", "SYN_0001", "SYN_0002"]
    assert all(set(p["sources"]) <= {"phantom_000", "phantom_001"} for p in log["patients"])
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 3
    label = nib.load(out / "labelsTr" / "SYN_0001.nii.gz")
    real = nib.load(data / "labelsTr" / "phantom_001.nii.gz")
    np.testing.assert_allclose(label.affine, real.affine)
    assert (out / "instancesTr" / "SYN_0001.nii.gz").is_file() and (out / "preview.png").stat().st_size > 0
    before = (out / "labelsTr" / "SYN_0000.nii.gz").read_bytes()
    assert main(base + ["--patients", "4", "--out", str(out), "--quiet"]) == 0  # continue to 4
    assert (out / "labelsTr" / "SYN_0000.nii.gz").read_bytes() == before
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 4
    with pytest.raises(SystemExit) as exit_info:
        main(base + ["--patients", "4", "--out", str(out), "--seed", "3", "--quiet"])
    assert exit_info.value.code == 2 and "made with other settings" in capsys.readouterr().err
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        main(base + ["--patients", "1", "--out", str(tmp_path / "user"), "--quiet"])
    assert "holds no synthesis.json" in capsys.readouterr().err and (tmp_path / "user" / "notes.txt").is_file()


def test_a_folder_made_before_a_setting_existed_still_resumes(tmp_path):
    from training.data import load_dataset, write_phantom_dataset
    from training.sampling.procedural_sampling import synthesise_to_directory

    dataset = load_dataset(write_phantom_dataset(tmp_path / "ph", n_patients=2, shape=(32, 32, 8)))
    shapes = "configs/procedural/phantom-shapes.yaml"
    synthesise_to_directory(dataset, dataset.case_ids, "shape-insertion", shapes, 1, 0, tmp_path / "out", progress=False)
    log_path = tmp_path / "out" / "synthesis.json"
    log = json.loads(log_path.read_text())
    del log["config"]["exclude_sources_with"]          # as written before the setting existed
    log_path.write_text(json.dumps(log))
    report = synthesise_to_directory(dataset, dataset.case_ids, "shape-insertion", shapes, 2, 0, tmp_path / "out",
                                     progress=False)
    assert report.action == "resume" and len(json.loads(log_path.read_text())["patients"]) == 2

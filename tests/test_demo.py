"""The demo (``make demo``) end to end in its --quick form: every stage writes what the README
promises, and a second run reuses the finished stages instead of redoing or clobbering them."""
import csv
import json

import pytest

from segmentation.demo import main


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["--quick", "--out", str(out)]) == 0
    return out


def test_every_stage_leaves_its_outputs(demo):
    assert json.loads((demo / "data" / "phantoms" / "dataset.json").read_text())["numTraining"] == 8
    snapshots = sorted((demo / "gan" / "conditional").glob("snapshot-*"))
    assert snapshots and (snapshots[-1] / "G_ema.safetensors").is_file()
    for arm in ("baseline-gan", "pair"):
        folder = demo / "synthetic" / arm
        assert len(list((folder / "labelsTr").glob("*.nii.gz"))) == 4
        assert (folder / "preview.png").stat().st_size > 0 and (folder / "synthesis.json").is_file()
    with open(demo / "study" / "cases.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # 2 folds x (real + 7 arms x 1 k) runs, each scoring 2 test patients
    assert len({r["run_id"] for r in rows}) == 16
    assert {r["arm"] for r in rows} == {"real", "oracle", "noise", "lesions", "label-to-image", "cut-and-paste",
                                        "baseline-gan", "pair"}
    assert len({r["case"] for r in rows}) == 2
    assert {r["source"] for r in rows if r["arm"] == "oracle"} == {"control:oracle"}
    for report in ("report", "report-core"):
        text = (demo / report / "report.md").read_text()
        assert "Each condition against the baseline" in text and "Friedman" in text
        assert "cannot reach significance at all" in text  # the quick design is stated as too small
        assert (demo / report / "cd_diagram.png").stat().st_size > 0


def test_second_run_reuses_finished_stages(demo, capsys):
    runs = {p: p.stat().st_mtime_ns for p in (demo / "study" / "runs").glob("*.json")}
    synthetic = (demo / "synthetic" / "pair" / "synthesis.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["--quick", "--out", str(demo)]) == 0
    printed = capsys.readouterr()
    assert "already complete" in printed.out and "16 already done" in printed.err
    assert {p: p.stat().st_mtime_ns for p in (demo / "study" / "runs").glob("*.json")} == runs
    assert (demo / "synthetic" / "pair" / "synthesis.json").stat().st_mtime_ns == synthetic


def test_failing_stage_stops_the_demo_with_its_name(tmp_path, capsys):
    (tmp_path / "data" / "phantoms").mkdir(parents=True)
    (tmp_path / "data" / "phantoms" / "dataset.json").write_text("{not json")
    assert main(["--quick", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "1b. inspect the dataset" in err and "dataset.json" in err

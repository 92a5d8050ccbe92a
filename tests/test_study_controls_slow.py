"""The positive and negative controls on real U-Net runs (slow: 60 runs of the demo's design with
4 repeats, 20 blocks).

At n_real = 2 the oracle (fresh phantom patients: ideal synthetic data) must be reported
significantly better than real-only on the small lesion classes, and the noise arm must not be
reported better -- the study can see an effect that is there and does not invent one.  The demo's
10 blocks detect ~0.17 Dice on the tumour core with 80 % power, while the oracle's gain there is ~0.1:
20 blocks, so that the positive control is tested with a design that can see it."""
from pathlib import Path

import pytest

from segmentation.report.report import ReportConfig, make_report
from segmentation.study.runner import run_study
from segmentation.report.score_table import ScoreTableConfig, drop_incomplete_blocks, load_score_table
from segmentation.report.stats import compare_paired_to_control
from segmentation.study.study_config import load_study_config

DEMO = Path(__file__).resolve().parents[1] / "configs" / "study" / "phantom_demo.yaml"


@pytest.fixture(scope="module")
def control_results(tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("controls")
    config = load_study_config(DEMO, ['arms=[{"name": "oracle", "control": "oracle"}, '
                                      '{"name": "noise", "control": "noise"}]', "repeats=4"])
    run_study(config, results, device="cpu", progress=False, threads=1)
    return results


@pytest.mark.slow
@pytest.mark.parametrize("class_name", ["oedema", "core"])
def test_oracle_is_found_better_and_noise_is_not_at_small_n(control_results, class_name):
    table = drop_incomplete_blocks(load_score_table(control_results, ScoreTableConfig(class_name=class_name)))
    paired = compare_paired_to_control(table.scores, table.condition_index("real"))
    verdict = paired.verdict()
    assert verdict[table.condition_index("oracle")] == 1
    assert verdict[table.condition_index("noise")] != 1
    report = make_report(table, control_results / f"report-{class_name}", ReportConfig(plots=False))
    assert "Controls behaved as expected" in report.markdown.read_text()

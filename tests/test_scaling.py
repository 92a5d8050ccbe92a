"""Data-scaling curves, annotation efficiency, crossover, the grouped overview and report.html."""
import csv
import math

import numpy as np
import pytest

from segmentation.report.cli_report import main
from segmentation.report.html import markdown_to_html
from segmentation.report.scaling import annotation_efficiency, crossover, equivalent_n, scaling_data

COLUMNS = ["dataset", "fold", "repeat", "arm", "source", "n_synthetic", "n_real", "test_set", "case", "class", "dice"]


def real_curve(n):
    return 0.5 + 0.02 * n  # real-only: linear in n


def write_scaling_cases(path, noise=0.0, blocks=8, seed=0):
    """real-only at n in {2, 4, 8, 16}; 'syn' +4 worth real_curve(9) at n = 4 (so n' = 9) and with an
    advantage of +0.1, +0.1, -0.05, -0.1 at the four n (crossover at 6.7); 'only' +8 at n = 0 scoring
    real_curve(3) (synthetic only worth 3 real patients)."""
    rng = np.random.default_rng(seed)
    advantage = {2: 0.1, 4: real_curve(9) - real_curve(4), 8: -0.05, 16: -0.1}
    rows = []
    for b in range(blocks):
        level = rng.normal(0, noise)
        for n in (2, 4, 8, 16):
            for arm, k, score in (("real", 0, real_curve(n)), ("syn", 4, real_curve(n) + advantage[n])):
                for case in range(3):
                    rows.append(["d", b % 4, b // 4, arm, arm, k, n, "in-distribution", f"c{case}", "core",
                                 score + level + rng.normal(0, noise)])
        for case in range(3):
            rows.append(["d", b % 4, b // 4, "only", "only", 8, 0, "in-distribution", f"c{case}", "core",
                         real_curve(3) + level + rng.normal(0, noise)])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    return path


def load(path):
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return scaling_data(COLUMNS, rows, "dice", "core", higher_is_better=True)


def test_equivalent_n_inverts_the_real_only_curve():
    n, curve = np.array([2, 4, 8]), np.array([0.5, 0.6, 0.8])
    assert equivalent_n(n, curve, 0.7) == pytest.approx(6.0)
    assert equivalent_n(n, curve, 0.4) == -math.inf and equivalent_n(n, curve, 0.9) == math.inf
    assert equivalent_n(n, -curve, -0.7, higher_is_better=False) == pytest.approx(6.0)


def test_annotation_efficiency_and_crossover_recover_the_known_answer(tmp_path):
    exact = load(write_scaling_cases(tmp_path / "exact.csv"))
    by_key = {(e.arm, e.n): e for e in annotation_efficiency(exact)}
    assert by_key[("syn", 4)].n_equivalent == pytest.approx(9.0)
    assert (by_key[("syn", 4)].low, by_key[("syn", 4)].high) == pytest.approx((9.0, 9.0))
    assert by_key[("only", 0)].n_equivalent == pytest.approx(3.0)  # synthetic only matches 3 real
    assert crossover(exact, "syn", 4) == pytest.approx(4 + 4 * 0.1 / 0.15)  # +0.1 at 4, -0.05 at 8
    noisy = load(write_scaling_cases(tmp_path / "noisy.csv", noise=0.01, blocks=16))
    estimate = {(e.arm, e.n): e for e in annotation_efficiency(noisy)}[("syn", 4)]
    assert abs(estimate.n_equivalent - 9.0) < 1.0 and estimate.low <= 9.0 <= estimate.high


def test_report_of_several_n_writes_one_report_per_n_and_the_overview(tmp_path):
    results = tmp_path / "results"
    write_scaling_cases(results / "cases.csv", noise=0.005, blocks=8)
    assert main([str(results), "--class", "core"]) == 0
    out = results / "report"
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["n16", "n2", "n4", "n8"]  # no n0: no baseline
    overview = (out / "report.md").read_text()
    assert "## Data scaling — in-distribution" in overview and "![Score against" in overview
    assert "| syn +4 | 4 |" in overview and "| only +8 | 0 |" in overview
    assert "- syn +4: stops helping at n ≈ 6.7" in overview
    assert "| condition | n = 2 | n = 4 | n = 8 | n = 16 |" in overview
    with open(out / "efficiency.csv", newline="") as handle:
        rows = {(r["arm"], r["n_real"]): r for r in csv.DictReader(handle)}
    assert rows[("only", "0")]["sentence"].startswith("synthetic only + 8 only ≈ ")
    assert 2.8 < float(rows[("only", "0")]["equivalent_n"]) < 3.2
    page = (out / "report.html").read_text()
    assert page.count("<table>") == 2 and "data:image/png;base64," in page
    assert (out / "n4" / "report.html").is_file()


def test_html_escapes_user_strings_and_embeds_figures(tmp_path):
    import matplotlib.pyplot as plt

    figure = plt.figure()
    figure.savefig(tmp_path / "f.png")
    plt.close(figure)
    page = markdown_to_html("# Title\n\n- arm <script>x</script> | **bold**\n\n| a | b |\n|---|---|\n| 1 | <i> |\n\n"
                            "![fig](f.png)\n![gone](missing.png)", tmp_path)
    assert "<script>x</script>" not in page and "&lt;script&gt;" in page and "<b>bold</b>" in page
    assert "<td>&lt;i&gt;</td>" in page and "data:image/png;base64," in page and "missing figure" in page

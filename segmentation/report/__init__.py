"""Stage 5, the report: from a study's per-patient scores to the verdicts and the figures.

The path of one score through this package:

    score_table   RESULTS/cases.csv rows -> one score per (block, condition): a cell's mean over its
                  test patients for the chosen metric and class (empty-class and missed-HD95 rules applied)
    stats         the blocks x conditions table -> each condition against the baseline (exact Wilcoxon
                  signed-rank on the paired blocks, Holm, bootstrap CI of the median difference), and
                  the descriptive all-condition ranking (Friedman, Iman-Davenport, Nemenyi, CD)
    power         the design's minimum detectable effect, stated with every "no difference"
    report        findings in words + tables -> report.md / .html / .tex, ranks.csv, pvalues.csv
    plots         CD diagram, score against k; scaling / overview: per-n reports, the scaling figure
                  and the side-by-side verdicts of a data-scaling study
    cli_report    ``nemenyi_report.py``: reads a results folder and writes all of it

It imports nothing from the study (stage 4) but the results folder's data-provenance check.
"""

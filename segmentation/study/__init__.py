"""Stage 4, the study: U-Nets on real data with and without synthetic patients, run by run.

The path of one run through this package:

    study_config  the YAML study (datasets, arms, k, n_real, U-Net, budget) -> a validated StudyConfig
    grid          the config -> runs: one per (dataset, fold, repeat = a block) x arm x k x n, each block
                  with its own seed, every arm of a block the same one (paired runs)
    study_data    the real datasets, splits and slice caches; the synthetic arms (folders, GAN samples,
                  procedural patients made per block, controls) -- every leakage and compatibility check
                  before any training; provenance: the data fingerprints a results folder is bound to
    unet          the run's slices (real + its k synthetic) -> a MONAI U-Net trained under the budget
    evaluation    the trained U-Net on the held-out test patients -> Dice / HD95 / NSD / detection per class;
                  instances: objects one by one -> COCO AP50 / mAP per test set
    runner        runs the runs (resumable, sharded, --jobs workers)
    results       RESULTS/runs/RUN.json per finished run (its config and fingerprint), cases.csv
    cli_study     ``run_study.py``: the dry run (grid, cost, power) and the run

The report (stage 5) reads RESULTS/cases.csv: `segmentation.report`.
"""

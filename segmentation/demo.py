"""The whole pipeline on the embedded phantom patients, on a CPU: ``make demo`` / ``stylepair-demo``.

The five stages run through the same entry points a user calls (each printed before it runs):

1. ``stylepair-data phantoms`` + ``inspect``: 20 phantom patients (4 MR contrasts, 6 labels) in MSD layout;
2. ``train_gan.py``: a short conditional StyleGAN2 run on them (a few kimg: it shows the loop, its
   snapshots, sample grids and TensorBoard logs; it is far too short to be useful);
3. ``sample_patients.py``: synthetic patients from the generators committed in ``checkpoints/tiny-*``
   (trained ~100 kimg on 20 phantoms of population seed 0), once with the baseline generator
   (image and mask together) and once with the mask -> image pair, each with a preview next to
   real patients;
4. ``run_study.py``: ``configs/study/phantom_demo.yaml`` with the folders of this demo -- MONAI
   U-Nets on 2 real training patients of another phantom population (seed 1: no study patient
   ever reached the generators), alone and with 8 patients of each GAN arm, of three procedural
   synthesisers made per block from its 2 training patients (lesion insertion, label-to-image,
   cut-and-paste) and of two built-in controls (oracle, noise), 10 independent blocks, tested on
   16 held-out patients, two runs at a time;
5. ``nemenyi_report.py``: the paired verdicts against real-only (with effect sizes, the detectable
   difference and the controls' check) and the Friedman + Nemenyi ranking, for the foreground and
   for the smallest class (tumour core).

Every stage reuses what an earlier, interrupted demo already finished in ``--out``; ``--fresh``
starts over.  About 7 minutes on a 2-core CPU with the defaults; ``--quick`` (smaller patients,
two folds, a few U-Net steps) takes about 20 seconds and only shows that everything runs.
"""
from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from training.data.typed_config import read_yaml_mapping, set_dotted

ROOT = Path(__file__).resolve().parents[1]
STUDY_CONFIG = ROOT / "configs" / "study" / "phantom_demo.yaml"
CHECKPOINTS = ROOT / "checkpoints"


class DemoError(RuntimeError):
    """A stage exited with a non-zero status."""


@dataclass
class DemoConfig:
    """What the demo does.  Sizes default to the full demo; `quick` shrinks every stage."""

    out: Path = Path("demo_output")
    patients: int = 20                  # real phantom patients
    shape: tuple[int, int, int] = (64, 64, 24)
    seed: int = 0
    gan_kimg: float = 2.0               # length of the stage-2 demonstration run
    synthetic_patients: int = 80        # per generator: k = 8 for each of the study's 10 blocks
    threads: int = 1                    # torch CPU threads: 1 is fastest for these small models on a busy CPU
    jobs: int = 2                       # U-Net runs side by side in the study (one per core of a 2-core CPU)
    device: str = "cpu"
    quick: bool = False

    @classmethod
    def quick_config(cls, out: Path, threads: int = 1, device: str = "cpu") -> "DemoConfig":
        return cls(out=out, patients=8, shape=(32, 32, 8), gan_kimg=0.064, synthetic_patients=4,
                   threads=threads, jobs=1, device=device, quick=True)

    @property
    def data(self) -> Path:
        return self.out / "data" / "phantoms"

    @property
    def gan_run(self) -> Path:
        return self.out / "gan" / "conditional"

    def synthetic(self, arm: str) -> Path:
        return self.out / "synthetic" / arm


def run_stage(title: str, display: str, entry: Callable[[list[str]], int | None], argv: list[str]) -> None:
    """Print the command, run ``entry(argv)``, raise `DemoError` on a non-zero exit status."""
    print(f"\n=== {title}\n$ {display} {shlex.join(argv)}", flush=True)
    start = time.perf_counter()
    try:
        status = entry(argv)
    except SystemExit as exc:  # argparse and parser.exit report errors this way
        status = exc.code
    if status not in (0, None):
        raise DemoError(f"{title}: '{display}' exited with status {status}")
    print(f"--- {title}: {time.perf_counter() - start:.1f} s", flush=True)


def make_data(cfg: DemoConfig) -> None:
    """Stage 1: write the phantom patients (kept if already there) and inspect them."""
    from training.data.cli import main as data_main

    if not (cfg.data / "dataset.json").is_file():
        if cfg.data.exists():
            shutil.rmtree(cfg.data)  # a write interrupted before dataset.json: start it again
        run_stage("1a. phantom patients", "stylepair-data", data_main,
                  ["phantoms", str(cfg.data), "--patients", str(cfg.patients), "--seed", str(cfg.seed),
                   "--shape", *map(str, cfg.shape), "--layout", "msd"])
    run_stage("1b. inspect the dataset", "stylepair-data", data_main, ["inspect", str(cfg.data)])


def train_gan(cfg: DemoConfig) -> None:
    """Stage 2: a short conditional StyleGAN2 run (resumed if an earlier demo was interrupted)."""
    from training import checkpoint
    from training.cli_train import main as train_main

    argv = ["--cfg", "tiny", "--variant", "conditional", "--data", str(cfg.data), "--cond", "slice-position",
            "--kimg", str(cfg.gan_kimg), "--tick", str(cfg.gan_kimg / 4), "--snap", "2",
            "--threads", str(cfg.threads), "--device", cfg.device]
    argv += ["--resume", str(cfg.gan_run)] if checkpoint.list_snapshots(cfg.gan_run) else ["--out", str(cfg.gan_run)]
    run_stage("2. train a conditional GAN briefly", "python train_gan.py", train_main, argv)


def sample_patients(cfg: DemoConfig) -> dict[str, Path]:
    """Stage 3: synthetic patients from the committed tiny generators; returns {arm name: folder}."""
    from training.sampling.cli_sample import main as sample_main

    slices = ["--slices", str(cfg.shape[2])] if cfg.quick else []
    common = ["--patients", str(cfg.synthetic_patients), "--seed", str(cfg.seed), "--device", cfg.device,
              "--preview", "--preview-real", str(cfg.data), *slices]
    generators = {
        "baseline-gan": ["--gan", str(CHECKPOINTS / "tiny-baseline")],
        "pair": ["--mask-gan", str(CHECKPOINTS / "tiny-mask"), "--image-gan", str(CHECKPOINTS / "tiny-conditional")],
    }
    for arm, runs in generators.items():
        run_stage(f"3. sample patients ({arm})", "python sample_patients.py", sample_main,
                  [*runs, "--out", str(cfg.synthetic(arm)), *common])
    return {arm: cfg.synthetic(arm) for arm in generators}


def write_study_config(cfg: DemoConfig, synthetic: dict[str, Path]) -> Path:
    """The demo study: ``phantom_demo.yaml`` with this demo's synthetic folders for its GAN arms
    (shrunk with ``quick``), written to OUT/study.yaml so the run can be repeated by hand."""
    study = read_yaml_mapping(STUDY_CONFIG, "study config")
    settings = {f"arms.{arm}.folder": str(folder.resolve()) for arm, folder in synthetic.items()}
    if cfg.quick:
        settings.update({"name": "phantom_demo_quick", "k": [2], "n_real": [2], "repeats": 1,
                         "datasets.0.phantoms": {"n_patients": 10, "shape": [32, 32, 8], "seed": 1},
                         "datasets.0.preprocess": {"resolution": 16, "drop_end_slices": 0},
                         "splits.n_folds": 2, "splits.test_fraction": 0.2, "unet.channels": [8, 16],
                         "unet.strides": [2], "train.iterations": 8, "train.batch_size": 8, "train.val_every": 4})
    for key, value in settings.items():
        set_dotted(study, key, value, str(STUDY_CONFIG))
    path = cfg.out / "study.yaml"
    path.write_text(f"# written by the demo from {STUDY_CONFIG.relative_to(ROOT)}\n"
                    + yaml.safe_dump(study, sort_keys=False))
    return path


def run_study(cfg: DemoConfig, synthetic: dict[str, Path]) -> Path:
    """Stage 4: the augmentation study; finished runs of an interrupted demo are kept."""
    from segmentation.study.cli_study import main as study_main

    results = cfg.out / "study"
    weak = ["--allow-weak-design"] if cfg.quick else []  # 2 blocks: it shows the machinery, it cannot decide
    run_stage("4. the augmentation study", "python run_study.py", study_main,
              [str(write_study_config(cfg, synthetic)), "--results", str(results), "--device", cfg.device,
               "--threads", str(cfg.threads), "--jobs", str(cfg.jobs), *weak])
    return results


def write_reports(cfg: DemoConfig, results: Path) -> list[Path]:
    """Stage 5: the report (paired verdicts and the Friedman + Nemenyi ranking) for foreground Dice
    and for the tumour core's Dice."""
    from segmentation.report.cli_report import main as report_main

    reports = []
    for label, out in (("foreground", cfg.out / "report"), ("core", cfg.out / "report-core")):
        run_stage(f"5. report ({label} Dice)", "python nemenyi_report.py", report_main,
                  [str(results), "--class", label, "--out", str(out)])
        reports.append(out)
    return reports


def run_demo(cfg: DemoConfig) -> list[Path]:
    """All five stages; returns the report folders."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    make_data(cfg)
    train_gan(cfg)
    synthetic = sample_patients(cfg)
    results = run_study(cfg, synthetic)
    return write_reports(cfg, results)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stylepair-demo", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=DemoConfig.out, help="folder for everything the demo writes")
    parser.add_argument("--threads", type=int, default=DemoConfig.threads, help="torch CPU threads")
    parser.add_argument("--jobs", type=int, default=DemoConfig.jobs, help="U-Net runs side by side in the study")
    parser.add_argument("--device", default=DemoConfig.device, help="cpu, cuda, cuda:1, ... for every stage")
    parser.add_argument("--quick", action="store_true", help="tiny sizes everywhere: shows that it runs (~15 s)")
    parser.add_argument("--fresh", action="store_true", help="delete --out first instead of reusing finished stages")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``make demo``; returns 0, or 1 when a stage fails (its own error is printed)."""
    args = build_parser().parse_args(argv)
    if args.threads < 1 or args.jobs < 1:
        build_parser().error(f"--threads and --jobs must be >= 1, got {args.threads} and {args.jobs}")
    cfg = (DemoConfig.quick_config(args.out, args.threads, args.device) if args.quick
           else DemoConfig(out=args.out, threads=args.threads, jobs=args.jobs, device=args.device))
    if args.fresh and cfg.out.exists():
        shutil.rmtree(cfg.out)
    start = time.perf_counter()
    try:
        reports = run_demo(cfg)
    except DemoError as exc:
        print(f"\ndemo stopped: {exc}; rerun to continue from the finished stages", file=sys.stderr)
        return 1
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s; everything is in {cfg.out}/:\n"
          f"  data/phantoms/          the real phantom patients (MSD layout)\n"
          f"  gan/conditional/        the stage-2 run: snapshots, sample grids, TensorBoard logs\n"
          f"  synthetic/*/            synthetic patients (nnU-Net v2 raw) with preview.png\n"
          f"  study/                  one JSON per U-Net run, cases.csv (per patient and class)\n"
          + "".join(f"  {p.name + '/':<24}report.md (verdicts vs real-only, controls, ranking), cd_diagram.png\n"
                    for p in reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())

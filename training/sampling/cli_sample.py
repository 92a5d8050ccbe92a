"""`sample_patients.py` / `stylepair-sample`: synthetic patients from trained generators, written as
an nnU-Net v2 raw dataset (imagesTr/, labelsTr/, dataset.json) with synthesis.json beside it."""
from __future__ import annotations

import argparse
import math
import sys

from procedural import SYNTHESISERS, ProceduralError
from training.checkpoint import CheckpointError
from training.data import DataError, load_dataset
from training.data.errors import one_line_errors
from training.data.splits import read_case_ids
from training.sampling.procedural_sampling import synthesise_to_directory
from training.runtime import keep_freed_memory
from training.sampling import (MAX_REJECTIONS_PER_PATIENT, QualityGateError, load_source, resolve_device,
                               sample_to_directory)
from training.sampling.synthetic_dataset import GRIDS, OutputDirError, QualityGate, SamplingSettings

DESCRIPTION = """\
Sample synthetic patients (stacks of axial slices with their masks) from trained generators, or make
them procedurally from real patients (--procedural), and write them as an nnU-Net v2 raw dataset:
DIR/imagesTr/SYN_XXXX_000m.nii.gz (one file per modality), DIR/labelsTr/SYN_XXXX.nii.gz,
DIR/dataset.json, plus DIR/synthesis.json (generators, checkpoint SHA-256, seeds, psi, versions,
rejections; or the synthesiser, its config and the source patients of every synthetic one)."""

EPILOG = """\
examples:
  python sample_patients.py --gan checkpoints/tiny-baseline --patients 20 --out synthetic/baseline
  python sample_patients.py --mask-gan checkpoints/tiny-mask --image-gan checkpoints/tiny-conditional \\
      --patients 20 --out synthetic/pair --psi 0.8 --preview
  python sample_patients.py --procedural lesion-insertion --from DATASET \\
      --config configs/procedural/phantom-lesions.yaml --cases train_ids.txt --patients 20 --out synthetic/lesions

A run dir means its newest snapshot whose checksums verify; a snapshot dir is used as given. The
EMA generator is sampled. Each candidate patient j is drawn from the seed (--seed, j), so the same
command writes identical files; --append continues after the candidates used before, so appended
patients are new ones even with the same --seed. Rerunning an interrupted command (same settings)
resumes it: only the missing patients are written.
"""


MAX_PSI = 2.0           # beyond it truncation extrapolates far outside the learnt latent space
MAX_PATIENTS = 100_000
MAX_SLICES = 4096        # slices per patient (the checkpoints' limit)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown for every optional argument; the epilog keeps its line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.required else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of sample_patients.py (every option with its default in --help)."""
    parser = argparse.ArgumentParser(prog="sample_patients.py", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=_HelpFormatter)
    source = parser.add_argument_group("generators (either --gan, or --mask-gan with --image-gan)")
    source.add_argument("--gan", metavar="RUN", default=None,
                        help="a baseline run: one generator for images and masks")
    source.add_argument("--mask-gan", metavar="RUN", default=None,
                        help="a mask run: the first half of the pair pipeline")
    source.add_argument("--image-gan", metavar="RUN", default=None,
                        help="a conditional run: the images for the masks of --mask-gan")
    procedural = parser.add_argument_group("procedural synthesis (instead of generators)")
    procedural.add_argument("--procedural", metavar="NAME", choices=sorted(SYNTHESISERS), default=None,
                            help=f"make patients with a procedural synthesiser: {', '.join(sorted(SYNTHESISERS))}")
    procedural.add_argument("--from", dest="from_dataset", metavar="DATASET", default=None,
                            help="the real dataset whose patients the synthesiser starts from")
    procedural.add_argument("--config", metavar="FILE", default=None,
                            help="the synthesiser's YAML settings (configs/procedural/); None: its defaults")
    procedural.add_argument("--cases", metavar="FILE", default=None,
                            help="a text file of the case ids to use (one per line), e.g. the training patients "
                                 "only; None: every patient of DATASET")
    out = parser.add_argument_group("output")
    out.add_argument("--patients", type=int, required=True, help="number of patients to write")
    out.add_argument("--out", metavar="DIR", required=True, help="output dataset folder (nnU-Net v2 raw)")
    mode = out.add_mutually_exclusive_group()
    mode.add_argument("--append", action="store_true",
                      help="add --patients new patients to an existing synthetic dataset in DIR")
    mode.add_argument("--overwrite", action="store_true",
                      help="replace imagesTr/, labelsTr/, dataset.json, synthesis.json and preview.png in DIR "
                           "(only in a folder sample_patients.py wrote; other files are kept)")
    out.add_argument("--preview", action="store_true",
                     help="write DIR/preview.png: modalities and mask overlay of a few patients")
    out.add_argument("--grid", choices=GRIDS, default="real",
                     help="real: each patient resampled onto the real patients' in-plane grid and stored like their files "
                          "(orientation, voxel types, qform/sform codes; from the training run's typical patient); "
                          "generator: the generator's square slice frame, RAS, float32 (what stylepair wrote before)")
    out.add_argument("--preview-real", metavar="DATASET", default=None,
                     help="with the preview, show a few patients of this real dataset below the synthetic ones")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--psi", type=float, default=1.0, help="truncation psi (1: none, 0: the mean w)")
    sampling.add_argument("--cutoff", type=int, default=None,
                          help="truncate only the first CUTOFF w layers; None: all layers")
    sampling.add_argument("--seed", type=int, default=0, help="random seed")
    sampling.add_argument("--slices", type=int, default=None,
                          help="slices per patient; None: a stack length drawn from the training patients, less the "
                               "end slices training dropped")
    sampling.add_argument("--batch", type=int, default=16, help="slices per generator call")
    sampling.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    gate = parser.add_argument_group(
        "quality gate (rejected candidates are counted in synthesis.json and replaced by new ones; "
        f"more than {MAX_REJECTIONS_PER_PATIENT} rejections per requested patient stop the run)")
    gate.add_argument("--min-label-fraction", type=float, default=0.0,
                      help="reject patients whose non-background voxel fraction is below this")
    gate.add_argument("--max-label-fraction", type=float, default=1.0,
                      help="reject patients whose non-background voxel fraction is above this")
    gate.add_argument("--keep-empty", action="store_true", help="accept patients whose mask is all background")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


@one_line_errors("sample_patients.py")
def main(argv: list[str] | None = None) -> int:
    """Parse argv (default sys.argv[1:]), sample, print a summary. Returns 0 on success; exits with
    2 on a usage error (bad arguments, refused directory, unusable or incompatible runs), 1 when the
    quality gate gives up, 130 when interrupted (rerun to resume)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not math.isfinite(args.psi) or not 0.0 <= args.psi <= MAX_PSI:
        parser.error(f"--psi must be a number in [0, {MAX_PSI:g}] (1: no truncation), got {args.psi}")
    if args.patients > MAX_PATIENTS or (args.slices is not None and args.slices > MAX_SLICES):
        parser.error(f"--patients must lie in 1..{MAX_PATIENTS} and --slices in 1..{MAX_SLICES}")
    if args.procedural is not None:
        return procedural_main(parser, args)
    if args.gan is None and args.mask_gan is None and args.image_gan is None:
        parser.error("give --gan RUN (baseline), --mask-gan RUN --image-gan RUN (pair), or --procedural NAME")
    try:
        device = resolve_device(args.device)
        if device.type == "cpu":
            keep_freed_memory()
        source = load_source(args.gan, args.mask_gan, args.image_gan, device=device)
        gate = QualityGate(args.min_label_fraction, args.max_label_fraction, args.keep_empty)
        settings = SamplingSettings(source.pipeline, source.generators, args.patients, args.seed, args.psi,
                                    args.cutoff, args.slices, gate, grid=args.grid)
        report = sample_to_directory(source, settings, args.out, batch=args.batch, device=device,
                                     append=args.append, overwrite=args.overwrite, preview=args.preview,
                                     preview_real=args.preview_real, progress=not args.quiet)
    except (OutputDirError, CheckpointError, ValueError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    except QualityGateError as exc:
        parser.exit(1, f"{parser.prog}: error: {exc}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"{parser.prog}: interrupted; the patients written so far are kept, rerun the same "
                         f"command to resume\n")
    if report.action == "complete":
        print(f"{report.out_dir}: already complete ({report.total} patients), nothing to do")
    else:
        rejected = sum(report.rejected.values())
        reasons = ", ".join(f"{why}: {n}" for why, n in sorted(report.rejected.items()))
        print(f"{report.out_dir}: {report.action}, wrote {report.written} patients ({report.total} in the "
              f"dataset); quality gate rejected {rejected}" + (f" ({reasons})" if reasons else ""))
    if report.preview is not None:
        print(f"preview: {report.preview}")
    return 0


def _case_ids(path: str | None, dataset) -> list[str]:
    """The case ids of --cases (one per line, '#' comments), checked against the dataset; all without it."""
    if path is None:
        return dataset.case_ids
    ids = read_case_ids(path, "--cases")
    unknown = [c for c in ids if c not in dataset.case_ids]
    if unknown or not ids:
        raise ValueError(f"--cases {path}: {'no case ids' if not ids else f'unknown case ids {unknown[:5]}'} "
                         f"(the dataset has {len(dataset.case_ids)} patients, e.g. {dataset.case_ids[:3]})")
    return ids


def procedural_main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``--procedural NAME --from DATASET``: synthesise, print a summary; 2 on bad input, 130 on Ctrl-C."""
    if args.gan or args.mask_gan or args.image_gan:
        parser.error("--procedural makes patients without generators: leave out --gan / --mask-gan / --image-gan")
    if args.from_dataset is None:
        parser.error("--procedural needs --from DATASET (the real patients it starts from)")
    if args.append or args.overwrite:
        parser.error("--procedural continues a folder with the same settings by itself: leave out --append / "
                     "--overwrite (use another --out for other settings)")
    try:
        dataset = load_dataset(args.from_dataset)
        report = synthesise_to_directory(dataset, _case_ids(args.cases, dataset), args.procedural, args.config,
                                         args.patients, args.seed, args.out, preview=args.preview,
                                         progress=not args.quiet)
    except (ProceduralError, DataError, OutputDirError, ValueError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"{parser.prog}: interrupted; the patients written so far are kept, rerun the same "
                         f"command to resume\n")
    print(f"{report.out_dir}: {report.action}, wrote {report.written} patients ({report.total} in the dataset) "
          f"with {args.procedural} from {len(set(s for v in report.sources.values() for s in v))} real patients")
    if report.preview is not None:
        print(f"preview: {report.preview}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

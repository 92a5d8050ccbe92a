"""Run (a shard of) an augmentation study from a YAML config (see --help)."""
import sys

from segmentation.study.cli_study import main

if __name__ == "__main__":  # the guard lets --jobs start worker processes that import this file
    sys.exit(main())

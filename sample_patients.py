"""Sample synthetic patients from trained generators, or make them procedurally, into an nnU-Net v2
raw dataset (see --help)."""
import sys

from training.sampling.cli_sample import main

if __name__ == "__main__":
    sys.exit(main())

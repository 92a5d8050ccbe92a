"""Train a StyleGAN2 generator variant (baseline, mask, conditional); see `train_gan.py --help`."""
import sys

from training.cli_train import main

if __name__ == "__main__":
    sys.exit(main())

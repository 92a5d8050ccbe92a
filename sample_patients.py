"""Sample synthetic patients from trained generators into an nnU-Net v2 raw dataset (see --help)."""
from training.cli_sample import main

raise SystemExit(main())

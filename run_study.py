"""Run (a shard of) an augmentation study from a YAML config (see --help)."""
from segmentation.cli_study import main

raise SystemExit(main())

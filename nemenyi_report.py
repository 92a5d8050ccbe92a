"""Comparison report of a study: `python nemenyi_report.py RESULTS_DIR` (see --help)."""
import sys

from segmentation.report.cli_report import main

if __name__ == "__main__":
    sys.exit(main())

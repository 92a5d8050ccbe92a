"""Run every benchmark: import each benchmarks/bench_*.py module and call its main() with no
arguments, which prints its table(s). `make bench` runs this (`python -m benchmarks.run_all`).

A benchmark that raises is reported with its error and the others still run; the exit status is
then 1, so a broken benchmark does not pass unnoticed.
"""
from __future__ import annotations

import importlib
import pkgutil
import sys
import time
import traceback

import benchmarks


def benchmark_modules() -> list[str]:
    """Names of the bench_* modules of the benchmarks package, sorted."""
    return sorted(f"benchmarks.{m.name}" for m in pkgutil.iter_modules(benchmarks.__path__)
                  if m.name.startswith("bench_"))


def run(name: str) -> bool:
    """Import one benchmark module and run its main(); True when it finished without an error."""
    print(f"\n=== {name} ===", flush=True)
    start = time.perf_counter()
    try:
        importlib.import_module(name).main()
    except Exception:  # report and go on: one broken benchmark should not hide the others' tables
        traceback.print_exc()
        print(f"=== {name}: FAILED after {time.perf_counter() - start:.1f} s ===", flush=True)
        return False
    print(f"=== {name}: {time.perf_counter() - start:.1f} s ===", flush=True)
    return True


def main() -> int:
    """Run all benchmarks in name order; returns the process exit status."""
    names = benchmark_modules()
    failed = [name for name in names if not run(name)]
    if failed:
        print(f"\n{len(failed)} of {len(names)} benchmarks failed: {', '.join(failed)}")
        return 1
    print(f"\nall {len(names)} benchmarks ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())

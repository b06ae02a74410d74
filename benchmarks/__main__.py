"""``python -m benchmarks``: the benchmark command (:mod:`benchmarks.cli`)."""

from benchmarks.cli import main

main()

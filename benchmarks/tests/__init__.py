"""The benchmarks' tests (part of the suite: pyproject.toml testpaths)."""

"""The project's benchmarks: not part of the library (not installed by ``pip install .``).

Run from the repository root (the dataset configs' relative paths are resolved against the
working directory), with the library installed editable or not:

* ``python -m benchmarks``: every variant x seed of ``variants.yaml`` through the runner, and the
  report (``cli``: command line; ``runs``: the run queue; ``aggregate``; ``report``; ``plots``;
  ``data``: configs, split files and the Pop baseline);
* ``python -m benchmarks.eval_cost``: evaluation throughput of CELA vs its backbone;
* ``python -m benchmarks.text_cost``: CELA's text stages vs a straightforward implementation;
* ``python -m benchmarks.scaling``: stage wall time vs processes and data size;
* ``python -m benchmarks.new_items``: items held out of training, added back from their text and
  item features.

Only the library's public API is used: the runner (``python -m recbole_cela``), its config
(``recbole_cela.config.build_config``, ``run_settings``: a run's resolved settings,
``recbole_cela.utils.props_file`` / ``dataset_config_file``), data preparation, evaluation, io
(``recbole_cela.fileio``) and the text and model parts the cost tools measure.
"""

"""``python -m recbole_cela --model=... --dataset=...``: the runner (as ``run_recbole_cela.py`` and
the ``recbole-cela`` console script), for an installed library too."""

from recbole_cela.quick_start import main

if __name__ == "__main__":
    main()

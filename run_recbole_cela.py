"""Train and evaluate a CTR model (RecBole's or the plugin's) on a dataset.

    python run_recbole_cela.py --model=CELA --dataset=amazon-sports [--config_files="a.yaml b.yaml"] [--key=value ...]
"""

from recbole_cela.quick_start import main

if __name__ == "__main__":
    main()

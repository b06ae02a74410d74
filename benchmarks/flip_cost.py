r"""Training and scoring throughput (interactions/s) of FLIP beside CELA and DIN, interleaved in one process.

    python -m benchmarks.flip_cost --dataset=amazon-sports [--rounds=3] [--eval_rows=2048]
        [--train_batches=8] [--out=docs/benchmarks] [--report_only] [--key=value ...]

The seeds' trade-off in one table: FLIP reads a prompt per interaction with its encoder, in
training and in scoring; CELA reads each item's text once, into a table, so its training and
scoring run the ID model with one more input; DIN is the ID model itself. Each model is measured
the way it runs in this plugin:

* DIN, DCNV2 (FLIP-idOnly's backbone) and CELA (DIN fused with a cached text table): a training
  step on RecBole's train batches (``train_batch_size``), scoring with ``predict`` on evaluation
  batches (``eval_batch_size``);
* FLIP-textOnly and FLIP (joint): a training step on FLIP's length-bucketed batches of
  ``flip_finetune_batch_size`` prompts (top encoder blocks trainable), scoring with ``predict`` on the
  same evaluation batches, under the precision ``text_amp`` resolves to; ``FLIP (fp32)`` is the
  joint model with ``text_amp: False``, the path before bf16.

Scoring reads the first ``--eval_rows`` test interactions (each ID model repeats them until a
round lasts a second). Every round runs every model once, in turn, so a load change hits all
alike; the medians of the rounds are reported. Cost does not depend on the weights, so every model
is fresh (CELA's table random, as in ``benchmarks.eval_cost``). Writes
``<out>/<dataset>-flip-cost.{md,json}``; ``--report_only`` writes the markdown again from the JSON.
"""

import datetime
import itertools
import os
import shlex
import sys
import time

import numpy as np
import torch

from benchmarks.common import cost_tool_parser, config_overrides, cpu_snapshot, own_cpu, rewrite_report, write_md_json


def _models(dataset, overrides, config_file_list):
    """name -> (model, its config, its train loader, its test loader). Each model reads the data
    its own config makes (a sequential model's carries the history length, a context model's does
    not), all from the same split files: the same interactions, in the same order."""
    from recbole.data import create_dataset, data_preparation

    from recbole_cela.config import build_config
    from recbole_cela.data import prepare_from_config
    from recbole_cela.data.loaders import SampledLoader
    from recbole_cela.text.encoder import load_tokenizer, resolve_encoder_path
    from recbole_cela.text.prompts import build_prompts
    from recbole_cela.utils import init_seed

    splits = {}  # MODEL_TYPE -> (train, test) loaders

    def split(config):
        kind = config["MODEL_TYPE"]
        if kind not in splits:
            init_seed(config["seed"], config["reproducibility"])
            prepare_from_config(config)
            train, _, test = data_preparation(config, create_dataset(config))
            splits[kind] = (train, test)
        return splits[kind]

    flip = {"FLIP-textOnly": {"flip_finetune": "text"}, "FLIP": {"flip_finetune": "joint"},
            "FLIP (fp32)": {"flip_finetune": "joint", "text_amp": False}}
    plan = {"DIN": ("DIN", {}), "DCNV2": ("DCNV2", {}), "CELA": ("CELA", {}),
            **{name: ("FLIP", extra) for name, extra in flip.items()}}
    out = {}
    for name, (model_name, extra) in plan.items():
        model_class, config = build_config(model_name, dataset, config_file_list, {**overrides, **extra})
        train, test = split(config)
        torch.manual_seed(0)
        model = model_class(config, train.dataset)
        loader = train
        if model_name == "CELA":
            model.set_text_table(torch.randn(train.dataset.item_num, model.text_dim))
        if model_name == "FLIP":
            model.set_prompts(build_prompts(config, train.dataset, load_tokenizer(resolve_encoder_path(config["text_encoder"]))))
            loader = SampledLoader(train, torch.arange(len(train.dataset)), config["flip_finetune_batch_size"],
                                   shuffle=True, seed=config["seed"], lengths=model.prompts.lengths)
        out[name] = (model, config, loader, test)
    return out


def _eval_batches(test, rows):
    batches, n = [], 0
    for batch in test:
        interaction = batch[0] if isinstance(batch, tuple) else batch
        interaction = interaction[: rows - n]
        batches.append(interaction)
        n += len(interaction)
        if n >= rows:
            break
    return batches, n


def measure(dataset, rounds=3, eval_rows=2048, train_batches=8, overrides=None, log=print, config_file_list=None):
    overrides = {"show_progress": False, **(overrides or {})}
    models = _models(dataset, overrides, config_file_list)
    device = torch.device(models["DIN"][1]["device"])
    evals = {name: _eval_batches(test, eval_rows) for name, (_, _, _, test) in models.items()}
    n_eval = evals["DIN"][1]
    train = {name: [b.to(device) for b in itertools.islice(loader, train_batches)] for name, (_, _, loader, _) in models.items()}
    optimizers = {}
    for name, (model, *_) in models.items():
        model.to(device)
        optimizers[name] = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def train_round(name):
        model = models[name][0]
        model.train()
        start, n = time.perf_counter(), 0
        for batch in train[name]:
            optimizers[name].zero_grad()
            model.calculate_loss(batch).backward()
            optimizers[name].step()
            n += len(batch)
        return n / (time.perf_counter() - start)

    @torch.no_grad()
    def score_round(name):
        model = models[name][0]
        model.eval()
        start, n = time.perf_counter(), 0
        while True:  # an ID model repeats the rows until the round is long enough to time
            for batch in evals[name][0]:
                model.predict(batch.to(device))
            n += n_eval
            if time.perf_counter() - start > 1.0 or name.startswith("FLIP"):
                return n / (time.perf_counter() - start)

    for name in models:  # untimed warm-up: allocations, CELA's projected table
        train_round(name)
        score_round(name)
    per_s = {kind: {name: [] for name in models} for kind in ("train", "score")}
    cpu_before, own_before, started = cpu_snapshot()[0], own_cpu(), time.perf_counter()
    for r in range(rounds):
        for name in models:
            per_s["train"][name].append(train_round(name))
            per_s["score"][name].append(score_round(name))
        log(f"round {r + 1}/{rounds}: " + ", ".join(
            f"{k} train {per_s['train'][k][-1]:,.0f}/s score {per_s['score'][k][-1]:,.0f}/s" for k in models))
    elapsed = time.perf_counter() - started
    other = ((cpu_snapshot()[0] - cpu_before) - (own_cpu() - own_before)) / elapsed
    median = {kind: {k: float(np.median(v)) for k, v in rows.items()} for kind, rows in per_s.items()}
    return {"dataset": dataset, "rounds": rounds, "eval_rows": n_eval, "train_batches": train_batches,
            "per_s": per_s, "median_per_s": median, "other_cpu_cores": max(0.0, other),
            "batch_size": {k: len(train[k][0]) for k in models},
            "precision": {k: getattr(m, "precision", "fp32") for k, (m, *_) in models.items()},
            "prompt_length": models["FLIP"][1]["flip_max_prompt_length"],
            "n_params": {k: sum(p.numel() for p in m.parameters()) for k, (m, *_) in models.items()},
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "device": str(device)}


def table(result):
    """The markdown table of a ``measure`` result (the FLIP section of the benchmark report shows it too)."""
    m = result["median_per_s"]
    din = {kind: m[kind]["DIN"] for kind in m}
    rows = [f"| {k} | {result['batch_size'][k]:,} | {result['precision'][k]} | {m['train'][k]:,.0f} | "
            f"{m['train'][k] / din['train']:.4f}× | {m['score'][k]:,.0f} | {m['score'][k] / din['score']:.4f}× |"
            for k in m["train"]]
    return "\n".join(["| model | train batch | text precision | train interactions/s | / DIN | "
                      "scoring interactions/s | / DIN |", "|---|---|---|---|---|---|---|", *rows])


def write_report(result, out, command, date=None):
    """``<out>/<dataset>-flip-cost.{md,json}`` of a ``measure`` result; ``date`` defaults to now."""
    base = os.path.join(out, f"{result['dataset']}-flip-cost")
    result = {**result, "command": command,
              "date": date or datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    text = f"""# Training and scoring throughput: FLIP, CELA, DIN — {result['dataset']}

- command: `{command}`
- date: {result['date']}
- machine: {result['cpu_count']} CPU cores, {result['threads']} torch threads, torch {result['torch']}, device {result['device']}
- CPU used by other processes while it measured: {result['other_cpu_cores']:.2f} cores on average
- {result['rounds']} interleaved rounds after one warm-up each; training: {result['train_batches']} batches per round;
  scoring: the first {result['eval_rows']:,} test interactions; FLIP prompts capped at {result['prompt_length']} tokens

{table(result)}

Medians over the rounds. DIN and DCNV2 are RecBole's models; CELA is DIN fused with a cached
text table (the encoder never runs in its training or scoring); FLIP-textOnly and FLIP (joint) run
the encoder on one prompt per interaction, in training (top blocks trainable) and in scoring.
`FLIP (fp32)` is the joint model without bf16 autocast. FLIP-idOnly is DCNV2 itself.
"""
    return write_md_json(base, text, result)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = cost_tool_parser(__doc__, 3, "flip-cost")
    parser.add_argument("--eval_rows", type=int, default=2048)
    parser.add_argument("--train_batches", type=int, default=8)
    args, rest = parser.parse_known_args(argv)
    if rewrite_report(args, "flip-cost", write_report):
        return
    result = measure(args.dataset, args.rounds, args.eval_rows, args.train_batches, config_overrides(rest))
    path = write_report(result, args.out, "python -m benchmarks.flip_cost " + shlex.join(argv))
    print(f"report: {path}")


if __name__ == "__main__":
    main()

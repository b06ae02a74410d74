r"""Micro-benchmark of CELA's text stages: the plugin's implementation vs a straightforward one.

    python -m benchmarks.text_cost --dataset=amazon-sports [--items=32] [--out=docs/benchmarks]
        [--batch_size=32] [--seq_len=256] [--device=cpu|cuda] [--threads=N] [--encoder=FOLDER]
        [--report_only]

Measured in one process, on the same ``--items`` item texts of the dataset (a seeded sample),
the same encoder weights and batch size, so the ratios are fair:

(a) straightforward DAP pass: Hugging Face ``AutoModelForMaskedLM`` called with ``labels=``
    (vocabulary logits at every position), every text padded to ``--seq_len`` (256) tokens and
    tokenised in every batch, every layer trainable, SimCSE from two more passes at 256 tokens;
(b) the plugin's DAP pass: ``DomainAdaptivePretraining`` on ``TokenizedItems`` (tokenised once,
    padded to the batch's longest text, length-bucketed by ``ItemTextLoader``, vocabulary logits
    only at the masked positions), top ``text_trainable_layers`` blocks trainable (props/CELA.yaml);
(c) item encoding for the text table: ``encode_items`` (inference mode, length-sorted batches)
    vs a padded-to-256 ``no_grad`` loop;
(d) ``text_amp``: the plugin's DAP pass (b) and encoding (c) in fp32 and under bf16 autocast,
    alternately, with the cosine between the two precisions' item vectors.

Both training passes of (a)/(b) do forward + backward + AdamW step with the same loss (SimCSE +
``mlm_weight`` x MLM), gradient clipping at 1.0 and no autocast; (d) measures autocast apart. Each implementation first takes one untimed warm-up step on a few texts.
Results go to stdout and to a section of ``<out>/<dataset>-text-cost.md`` (+ ``.json``), keyed by
device, core count, items and batch size (a rerun with the same key replaces its section);
``--report_only`` writes the markdown again from that JSON.

The default 32 items (one batch) keep a CPU run at a couple of minutes: the straightforward pass
alone takes about a minute per batch of 32 on 2 cores. Use ``--items=256`` or more on a GPU or a
bigger machine. The CPU time other processes took during the measurement is reported: on a
shared machine, multi-threaded CPU timings suffer from stragglers (``--threads`` lowers the
thread count), small-batch code (the plugin's) the most, so the ratio is then understated.
"""

import argparse
import datetime
import json
import os
import re
import shlex
import sys
import time

import torch
import torch.nn.functional as F

from benchmarks.common import cpu_snapshot, own_cpu

WARMUP_TEXTS = 4


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _settings(config):
    keys = ["text_pooling", "simcse_temperature", "mlm_weight", "mlm_probability",
            "text_trainable_layers", "max_text_length", "dap_learning_rate"]
    return {k: config[k] for k in keys}


def straightforward_dap(encoder_path, tokenizer, texts, settings, batch_size, seq_len, device, warmup=True):
    """Seconds for one training pass of the straightforward DAP implementation over ``texts``."""
    from transformers import DataCollatorForLanguageModeling

    from recbole_cela.text.encoder import load_encoder, pool

    model = load_encoder(encoder_path, masked_lm=True).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings["dap_learning_rate"])
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=settings["mlm_probability"])
    special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)))

    def step(batch_texts):
        enc = tokenizer(list(batch_texts), padding="max_length", truncation=True,
                        max_length=seq_len, return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        masked, labels = collator.torch_mask_tokens(ids.clone(), torch.isin(ids, special_ids))
        ids, mask, masked, labels = ids.to(device), mask.to(device), masked.to(device), labels.to(device)
        mlm = model(input_ids=masked, attention_mask=mask, labels=labels).loss
        base = model.base_model
        z1 = pool(base(input_ids=ids, attention_mask=mask)[0], mask, settings["text_pooling"])
        z2 = pool(base(input_ids=ids, attention_mask=mask)[0], mask, settings["text_pooling"])
        sim = F.cosine_similarity(z1.unsqueeze(1), z2.unsqueeze(0), dim=-1) / settings["simcse_temperature"]
        simcse = F.cross_entropy(sim, torch.arange(len(sim), device=sim.device))
        loss = simcse + settings["mlm_weight"] * mlm
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if warmup:
        step(texts[:WARMUP_TEXTS])
    _sync(device)
    start = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        step(texts[i : i + batch_size])
    _sync(device)
    elapsed = time.perf_counter() - start
    n_trainable = sum(p.numel() for p in params)
    del model, optimizer
    return elapsed, n_trainable


def plugin_dap(encoder_path, tokenizer, tokenized, settings, batch_size, device, warmup=True, precision="fp32"):
    """Seconds for one training pass of the plugin's DAP over the items of ``tokenized``, its
    forward passes under ``precision`` (``text_amp``: "bf16" autocast, as the DAP trainer runs)."""
    from recbole_cela.model.dap import DomainAdaptivePretraining
    from recbole_cela.text.encoder import autocast, freeze_below, load_encoder
    from recbole_cela.data.loaders import ItemTextLoader

    encoder = freeze_below(load_encoder(encoder_path, masked_lm=True), settings["text_trainable_layers"])
    model = DomainAdaptivePretraining(encoder, tokenizer, settings["text_pooling"], settings["simcse_temperature"],
                                      settings["mlm_weight"], settings["mlm_probability"]).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings["dap_learning_rate"])

    def step(batch):
        batch = batch.to(device)
        with autocast(device, precision):
            losses = model.calculate_loss(batch)
        loss = sum(losses)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if warmup:
        step(tokenized.batch(torch.arange(min(WARMUP_TEXTS, len(tokenized)))))
    loader = ItemTextLoader(tokenized, torch.arange(len(tokenized)), batch_size, shuffle=True, seed=0)
    _sync(device)
    start = time.perf_counter()
    for batch in loader:
        step(batch)
    _sync(device)
    elapsed = time.perf_counter() - start
    n_trainable = sum(p.numel() for p in params)
    del model, optimizer
    return elapsed, n_trainable


def straightforward_encode(encoder, tokenizer, texts, pooling, batch_size, seq_len, device):
    """(seconds, vectors) of a padded-to-``seq_len`` no_grad encoding loop."""
    from recbole_cela.text.encoder import pool

    encoder.eval()
    out = []
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[i : i + batch_size]), padding="max_length", truncation=True,
                            max_length=seq_len, return_tensors="pt").to(device)
            hidden = encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])[0]
            out.append(pool(hidden, enc["attention_mask"], pooling).float().cpu())
    _sync(device)
    return time.perf_counter() - start, torch.cat(out)


def precision_cost(encoder_path, tokenizer, tokenized, settings, batch_size, device, rounds=3, log=print):
    """``text_amp``: the plugin's DAP pass and table encoding in fp32 and under bf16 autocast,
    alternately (fp32, bf16, fp32, ...) so that load changes hit both alike; medians of ``rounds``.
    Also how close the bf16 item vectors are to the fp32 ones (cosine)."""
    import statistics

    from recbole_cela.text.encoder import load_encoder, text_precision
    from recbole_cela.text.items import encode_items

    encoder = load_encoder(encoder_path).to(device)
    n, times, vectors = len(tokenized), {"fp32": {"dap": [], "encode": []}, "bf16": {"dap": [], "encode": []}}, {}
    for r in range(rounds):
        for precision in ("fp32", "bf16"):
            t_dap, _ = plugin_dap(encoder_path, tokenizer, tokenized, settings, batch_size, device, precision=precision)
            _sync(device)
            start = time.perf_counter()
            vectors[precision] = encode_items(encoder, tokenized, settings["text_pooling"], batch_size, device,
                                              precision=precision)
            _sync(device)
            times[precision]["dap"].append(t_dap)
            times[precision]["encode"].append(time.perf_counter() - start)
        log(f"    round {r + 1}/{rounds}: DAP fp32 {times['fp32']['dap'][-1]:.1f}s / bf16 "
            f"{times['bf16']['dap'][-1]:.1f}s, encoding fp32 {times['fp32']['encode'][-1]:.2f}s / bf16 "
            f"{times['bf16']['encode'][-1]:.2f}s")
    med = {p: {k: statistics.median(v) for k, v in t.items()} for p, t in times.items()}
    cosine = F.cosine_similarity(vectors["fp32"], vectors["bf16"], dim=-1)
    return {
        "rounds": rounds, "auto_picks": text_precision("auto", torch.device(device).type),
        "dap_items_per_s": {p: n / med[p]["dap"] for p in med},
        "encode_items_per_s": {p: n / med[p]["encode"] for p in med},
        "dap_speedup": med["fp32"]["dap"] / med["bf16"]["dap"],
        "encode_speedup": med["fp32"]["encode"] / med["bf16"]["encode"],
        "cosine_min": float(cosine.min()), "cosine_mean": float(cosine.mean()),
    }


def measure(texts, encoder_path=None, settings=None, batch_size=32, seq_len=256, device="cpu", log=print):
    """All three measurements on ``texts``; a result dict (items/s and speed-ups)."""
    from recbole_cela.text.encoder import load_encoder, load_tokenizer
    from recbole_cela.text.items import TokenizedItems, encode_items

    texts = list(texts)
    n = len(texts)
    tokenizer = load_tokenizer(encoder_path)
    result = {"items": n, "batch_size": batch_size, "seq_len": seq_len, "device": str(device),
              "settings": dict(settings), "threads": torch.get_num_threads()}
    cpu_before, own_before, started = cpu_snapshot()[0], own_cpu(), time.perf_counter()

    start = time.perf_counter()
    tokenized = TokenizedItems(tokenizer, texts, settings["max_text_length"])
    result["tokenize_once_s"] = time.perf_counter() - start
    lengths = tokenized.lengths.float()
    result["tokens_mean"] = float(lengths.mean())
    result["tokens_max"] = int(lengths.max())
    result["truncated_by_max_text_length"] = int((tokenized.lengths >= settings["max_text_length"]).sum())

    log(f"(a) straightforward DAP pass over {n} texts (padded to {seq_len}, all layers) ...")
    t_a, trainable_a = straightforward_dap(encoder_path, tokenizer, texts, settings, batch_size, seq_len, device)
    log(f"    {t_a:.1f}s, {n / t_a:.2f} items/s")
    log(f"(b) plugin DAP pass (tokenised once, longest-in-batch padding, top "
        f"{settings['text_trainable_layers']} layers) ...")
    t_b, trainable_b = plugin_dap(encoder_path, tokenizer, tokenized, settings, batch_size, device)
    log(f"    {t_b:.1f}s, {n / t_b:.2f} items/s")

    encoder = load_encoder(encoder_path).to(device)
    log("(c) item encoding: straightforward vs encode_items ...")
    t_c_straight, straight_vectors = straightforward_encode(
        encoder, tokenizer, texts, settings["text_pooling"], batch_size, seq_len, device)
    _sync(device)
    start = time.perf_counter()
    plugin_vectors = encode_items(encoder, tokenized, settings["text_pooling"], batch_size, device)
    _sync(device)
    t_c_plugin = time.perf_counter() - start
    log(f"    {n / t_c_straight:.1f} vs {n / t_c_plugin:.1f} items/s")
    log("(d) text_amp: the plugin's DAP pass and encoding in fp32 vs bf16 autocast, interleaved ...")
    result["precision"] = precision_cost(encoder_path, tokenizer, tokenized, settings, batch_size, device, log=log)

    result.update({
        "dap_straightforward": {"time_s": t_a, "items_per_s": n / t_a, "trainable_params": trainable_a},
        "dap_plugin": {"time_s": t_b, "items_per_s": n / t_b, "trainable_params": trainable_b,
                       "items_per_s_with_tokenization": n / (t_b + result["tokenize_once_s"])},
        "dap_speedup": t_a / t_b,
        "encode_straightforward": {"time_s": t_c_straight, "items_per_s": n / t_c_straight},
        "encode_plugin": {"time_s": t_c_plugin, "items_per_s": n / t_c_plugin},
        "encode_speedup": t_c_straight / t_c_plugin,
        "encode_max_abs_diff": float((straight_vectors - plugin_vectors).abs().max()),
    })
    elapsed = time.perf_counter() - started
    other = (cpu_snapshot()[0] - cpu_before) - (own_cpu() - own_before)
    result["other_cpu_cores"] = max(0.0, other / elapsed) if elapsed > 0 else None
    return result


def section_key(result):
    return (f"{result['device']}-{os.cpu_count()}cores-t{result['threads']}-items{result['items']}"
            f"-b{result['batch_size']}")


def _cores(result, key):
    """The machine's core count the result was measured on (recorded, else from its key)."""
    found = re.search(r"-(\d+)cores-", key)
    return result.get("cpu_count") or (int(found.group(1)) if found else os.cpu_count())


def render_section(result, key, dataset, command):
    a, b = result["dap_straightforward"], result["dap_plugin"]
    cores = _cores(result, key)
    ea, eb = result["encode_straightforward"], result["encode_plugin"]
    s = result["settings"]
    lines = [
        f"<!-- text-cost:{key} -->",
        f"## {result['device']}, {cores} cores, {result['items']} items, batch {result['batch_size']}",
        "",
        f"- command: `{command}`",
        f"- date: {result['date']}; torch {torch.__version__}, {result['threads']} threads; encoder "
        f"`{result['encoder']}`",
        f"- item texts: {result['items']} sampled items of `{dataset}`, {result['tokens_mean']:.1f} "
        f"tokens on average (max {result['tokens_max']}; {result['truncated_by_max_text_length']} "
        f"reach max_text_length={s['max_text_length']})",
    ]
    other = result.get("other_cpu_cores")
    if other is not None and str(result["device"]).startswith("cpu"):
        line = f"- CPU used by other processes during the measurement: {other:.2f} cores on average"
        if other > 0.25:
            line += (" — **the machine was shared: these timings are distorted (multi-threaded "
                     "small-batch work, the plugin's, suffers most), rerun on an idle machine**")
        lines.append(line)
    lines += [
        "",
        "| measurement | straightforward (items/s) | plugin (items/s) | speed-up |",
        "|---|---|---|---|",
        f"| DAP training pass (MLM + SimCSE, fwd + bwd + AdamW) | {a['items_per_s']:.2f} | "
        f"{b['items_per_s']:.2f} | {result['dap_speedup']:.1f}× |",
        f"| item encoding for the text table (no gradients) | {ea['items_per_s']:.1f} | "
        f"{eb['items_per_s']:.1f} | {result['encode_speedup']:.1f}× |",
        "",
        f"Straightforward: `AutoModelForMaskedLM(labels=...)` (vocabulary logits at all "
        f"{result['seq_len']} positions), texts padded to {result['seq_len']} tokens and tokenised "
        f"in every batch, all {a['trainable_params']:,} parameters trainable, SimCSE from two more "
        f"passes at {result['seq_len']} tokens. Plugin: `DomainAdaptivePretraining` on "
        f"`TokenizedItems` (tokenised once in {result['tokenize_once_s']:.3f}s, not in the pass; "
        f"{b['items_per_s_with_tokenization']:.2f} items/s with it), batches padded to their "
        f"longest text and length-bucketed, logits only at masked positions, top "
        f"{s['text_trainable_layers']} blocks trainable ({b['trainable_params']:,} parameters; "
        f"`text_trainable_layers` of props/CELA.yaml). Encoding: `encode_items` (inference mode, "
        f"length-sorted) vs a padded `no_grad` loop; largest difference between their vectors "
        f"{result['encode_max_abs_diff']:.2e}. One untimed warm-up step each; same texts, weights, "
        f"batch size and loss."
        + (" On a GPU `encode_items` runs under bf16 autocast (as in the plugin), the "
           "straightforward loop in fp32." if str(result["device"]).startswith("cuda") else ""),
    ]
    amp = result.get("precision")
    if amp:
        lines += [
            "",
            f"**`text_amp`** — the plugin's own code in fp32 and under bf16 autocast, alternately, median of "
            f"{amp['rounds']} rounds (`text_amp: auto` picks {amp['auto_picks']} on this device):",
            "",
            "| measurement | fp32 (items/s) | bf16 autocast (items/s) | speed-up |",
            "|---|---|---|---|",
            f"| DAP training pass | {amp['dap_items_per_s']['fp32']:.2f} | {amp['dap_items_per_s']['bf16']:.2f} | "
            f"{amp['dap_speedup']:.2f}× |",
            f"| item encoding for the text table | {amp['encode_items_per_s']['fp32']:.1f} | "
            f"{amp['encode_items_per_s']['bf16']:.1f} | {amp['encode_speedup']:.2f}× |",
            "",
            f"Item vectors, bf16 against fp32: cosine min {amp['cosine_min']:.5f}, mean {amp['cosine_mean']:.5f}.",
        ]
    lines.append(f"<!-- /text-cost:{key} -->")
    return "\n".join(lines) + "\n"


HEADER = ("# Text-stage cost — {dataset}\n\nThroughput of CELA's text stages "
          "(`python -m benchmarks.text_cost`), one section per device / cores / items / "
          "batch size.\n\n")


def _with_section(text, key, section):
    """``text`` with the section of ``key`` replaced by ``section`` (appended when absent)."""
    pattern = re.compile(rf"<!-- text-cost:{re.escape(key)} -->.*?<!-- /text-cost:{re.escape(key)} -->\n?", re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: section, text)
    return text.rstrip("\n") + "\n\n" + section


def rewrite_report(out, dataset):
    """``<out>/<dataset>-text-cost.md`` again from its JSON: the header, then every section."""
    from recbole_cela.fileio import atomic_write, read_json

    data = read_json(os.path.join(out, f"{dataset}-text-cost.json"))
    text = HEADER.format(dataset=dataset)
    for key, result in data.items():
        text = _with_section(text, key, render_section(result, key, result.get("dataset", dataset), result["command"]))
    return atomic_write(os.path.join(out, f"{dataset}-text-cost.md"), text)


def write_outputs(out, dataset, result, command):
    from recbole_cela.fileio import atomic_write, atomic_write_json

    os.makedirs(out, exist_ok=True)
    key = section_key(result)
    json_path = os.path.join(out, f"{dataset}-text-cost.json")
    data = {}
    if os.path.isfile(json_path):
        try:
            with open(json_path) as f:
                data = json.load(f)
        except ValueError:
            data = {}
    data[key] = result
    atomic_write_json(json_path, data)

    md_path = os.path.join(out, f"{dataset}-text-cost.md")
    text = ""
    if os.path.isfile(md_path):
        with open(md_path) as f:
            text = f.read()
    if not text.strip():
        text = HEADER.format(dataset=dataset)
    atomic_write(md_path, _with_section(text, key, render_section(result, key, dataset, command)))
    return md_path, json_path


def dataset_texts(dataset, n_items, seed=0):
    """``n_items`` item texts of ``dataset`` (a seeded sample, padding item excluded) + config."""
    import numpy as np
    from recbole.data import create_dataset

    from recbole_cela.config import build_config, command_line
    from recbole_cela.data import prepare_from_config
    from recbole_cela.text.items import item_texts

    with command_line([]):
        _, config = build_config("CELA", dataset, None, {})
    prepare_from_config(config)
    texts = item_texts(config, create_dataset(config))
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(np.arange(1, len(texts)), size=min(n_items, len(texts) - 1), replace=False))
    return [texts[i] for i in picked], config


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="amazon-sports")
    parser.add_argument("--items", type=int, default=32, help="item texts measured (default 32)")
    parser.add_argument("--out", default="docs/benchmarks")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seq_len", type=int, default=256, help="padding of the straightforward way")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--encoder", default=None, help="local HF folder; default: the bundled MiniLM")
    parser.add_argument("--threads", type=int, default=None, help="torch threads; default os.cpu_count()")
    parser.add_argument("--report_only", action="store_true",
                        help="measure nothing: write the markdown again from <out>/<dataset>-text-cost.json")
    return parser.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.report_only:
        print(f"written: {rewrite_report(args.out, args.dataset)}")
        return
    torch.set_num_threads(args.threads or os.cpu_count())
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    texts, config = dataset_texts(args.dataset, args.items)
    settings = _settings(config)
    from recbole_cela.text.encoder import resolve_encoder_path

    result = measure(texts, args.encoder, settings, args.batch_size, args.seq_len, device)
    result["encoder"] = resolve_encoder_path(args.encoder)
    result["dataset"] = args.dataset
    result["date"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    result["cpu_count"] = os.cpu_count()
    command = "python -m benchmarks.text_cost " + shlex.join(argv)
    result["command"] = command
    md_path, json_path = write_outputs(args.out, args.dataset, result, command)
    print(f"DAP pass: straightforward {result['dap_straightforward']['items_per_s']:.2f} items/s, "
          f"plugin {result['dap_plugin']['items_per_s']:.2f} items/s -> {result['dap_speedup']:.1f}x")
    print(f"encoding: straightforward {result['encode_straightforward']['items_per_s']:.1f} items/s, "
          f"plugin {result['encode_plugin']['items_per_s']:.1f} items/s -> {result['encode_speedup']:.1f}x")
    print(f"written: {md_path}, {json_path}")


if __name__ == "__main__":
    main()

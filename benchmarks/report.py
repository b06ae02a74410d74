"""The benchmark's markdown report (``<out>/<dataset>.md``), its JSON and its figures.

``render_markdown`` assembles the sections below in order; each section is a function of the
report dict (aggregates, comparisons, run records) and returns its lines.
"""

import datetime
import os
import platform

import numpy as np

from benchmarks import plots, registry
from benchmarks.aggregate import ablation_keys, aggregate, compare, comparisons
from benchmarks.common import FLIP_STAGES, QUICK_ARGS, SPLITS, STAGES, TEXT_STAGES, get

FIGURES = ("auc", "buckets", "cost", "stages")


# ------------------------------------------------------------------------------ formatting
def _f(value, digits=4):
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pm(mean, std, digits=4):
    if mean is None:
        return "–"
    return f"{mean:.{digits}f} ± {'–' if std is None else f'{std:.{digits}f}'}"


def _num(value):
    if value is None:
        return "–"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def _x(value):
    return "–" if value is None else f"{value:.2f}×"


def _ok(flag):
    return {True: "meets", False: "MISSES", None: "–"}[flag]


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict_sentence(ref, other, c):
    if c["diff"] is None:
        return f"{ref} vs {other}: no comparison ({c.get('reason')})."
    d = f"{c['diff']:+.4f} AUC"
    if c["verdict"] == "unknown":
        return f"{ref} vs {other}: {d}; {c['reason']}, so no claim either way."
    s = f"{c['spread']:.4f}"
    if c["verdict"] == "beats":
        return f"{ref} beats {other} by {d}, more than the seed-to-seed spread ({s})."
    if c["verdict"] == "loses":
        return f"{ref} is WORSE than {other} ({d}), by more than the seed-to-seed spread ({s})."
    return f"{ref} vs {other}: {d}, within the seed-to-seed spread ({s}): not a clear difference."


def gain_line(ref, base, gain):
    """'AUC gain of REF over BASE: overall +x, <bucket> +y, ...' (a ``gain_over`` result)."""
    parts = [f"overall {gain['overall']:+.4f}"] + [f"{b} {g:+.4f}" for b, g in gain["buckets"].items()]
    return f"AUC gain of {ref} over {base}: " + ", ".join(parts) + "."


def machine_info(records):
    import psutil
    import torch

    devices = sorted({get(r, "result", "device") for r in records if r["status"] == "ok"} - {None})
    return {
        "cpu_count": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "devices": devices or ["cuda" if torch.cuda.is_available() else "cpu"],
    }


# -------------------------------------------------------------------------------- sections
def header_section(report):
    settings, m = report["settings"], report["machine"]
    lines = [f"# {report['title']}", ""]
    if settings["quick"]:
        lines += ["> **Smoke check, not a benchmark**: `--quick` runs one seed with one epoch per "
                  "stage (`" + " ".join(QUICK_ARGS) + "`). The numbers below only show that every "
                  "variant runs end to end; do not compare them.", ""]
    lines += [
        f"- command: `{report['command']}`",
        f"- date: {report['date']}",
        f"- machine: {m['cpu_count']} CPU cores (`os.cpu_count()`), {m['ram_gb']} GiB RAM, "
        f"torch {m['torch']}, device {', '.join(m['devices'])}, Python {m['python']}",
        f"- seeds: {', '.join(map(str, settings['seeds']))}; extra runner arguments: "
        f"`{' '.join(settings['extra_args']) or '(none)'}`",
    ]
    others = [r["other_cpu_cores"] for r in report["runs"] if r.get("other_cpu_cores") is not None]
    if others:
        line = (f"- CPU used by other processes during the runs: {np.mean(others):.2f} cores on "
                f"average (max {max(others):.2f} in one run)")
        if max(others) > 0.25:
            line += (" — **other processes competed for the CPU: wall times and throughputs, and "
                     "ratios between variants run at different moments, are distorted**")
        lines.append(line)
    accepted = [r for r in report["runs"] if r.get("accepted_defaults")]
    if accepted:
        keys = sorted({k for r in accepted for k in r["accepted_defaults"]})
        lines.append(f"- reused although a default of props changed since they ran (`--accept_stale`): "
                     f"{len(accepted)} runs, keys {', '.join(keys)} (each run's JSON records the value it ran with)")
    parts = []
    for split in SPLITS:
        c = report["split_counts"].get(split)
        parts.append(f"{split} {c['samples']:,} ({c['positives'] / max(c['samples'], 1):.1%} positive)"
                     if c else f"{split} –")
    return lines + [f"- dataset `{report['dataset']}`: " + ", ".join(parts), ""]


def results_section(report, names, figures):
    agg, comp = report["aggregates"], report["comparisons"]
    rows = []
    for n in names:
        a = agg[n]
        status = f"{a['n_ok']}" + (f" (+{a['n_failed']} failed)" if a["n_failed"] else "")
        rows.append([
            f"**{n}**" if n == comp.get("reference") else n, status,
            _pm(a["test_auc_mean"], a["test_auc_std"]), _pm(a["test_logloss_mean"], a["test_logloss_std"]),
            _f(a["valid_auc_mean"]), _num(a["fit_time_s_mean"]), _num(a["eval_samples_per_s_mean"]),
            _num(a["peak_rss_mb_max"]), "–" if a["n_params"] is None else f"{a['n_params']:,}",
        ])
    lines = ["## Test results", "", _table(["variant", "runs", "test AUC", "test LogLoss", "best valid AUC",
                                            "fit time (s)", "eval (samples/s)", "peak RSS (MB)", "#params"], rows), ""]
    notes = ["Mean ± sample std over seeds (– for one seed). Peak RSS: the largest over seeds "
             "(the runner's whole process, data included). CELA's fit time covers all its stages."]
    if "Pop" in names:
        notes.append("Pop is not learned: score = positive train samples of the test item, "
                     "computed by the benchmark from the files; it is deterministic (std 0). Its "
                     "LogLoss is on the scores min-max scaled into [0.01, 0.99], so it is only "
                     "indicative.")
    return lines + [" ".join(notes), "", f"![test AUC]({figures['auc']})", ""]


def ablation_rows(agg, names):
    """One row per CELA variant: its stages and settings, valid/test AUC, and the test AUC gain
    over the frozen-vector row (no stage 1, no stage 2) with the closest fusion settings: same
    backbone, then same projection width, then same normalisation, then same epoch budget."""
    # FLIP rows have settings too (FLIP_KEYS), without CELA's stage switches: nothing to ablate.
    cela = [n for n in names if "dap" in (get(agg, n, "settings") or {}) and agg[n]["test_auc_mean"] is not None]
    frozen = [n for n in cela if not any(agg[n]["settings"].get(k) for k in ("dap", "align", "finetune_encoder"))]

    def reference(name, st):
        # The frozen row of the same dataset (a dataset_suffix row reads other item text).
        suffix = registry.variants().get(name, {}).get("dataset_suffix")
        same = [n for n in frozen if agg[n]["settings"].get("backbone") == st.get("backbone")
                and registry.variants().get(n, {}).get("dataset_suffix") == suffix]
        for key in ("text_proj_fields", "text_normalize", "epochs"):
            closer = [n for n in same if agg[n]["settings"].get(key) == st.get(key)]
            same = closer or same
        return same[0] if same else None

    base = {}
    if cela:  # every setting without a column of its own, as the reference row has it
        first = agg["CELA"]["settings"] if "CELA" in cela else agg[cela[0]]["settings"]
        base = {k: first.get(k) for k in ablation_keys() if k not in ("backbone", "dap", "align")}
    rows = []
    for n in cela:
        a, st = agg[n], agg[n]["settings"]
        other = [f"{k}={st.get(k)}" for k in base if st.get(k) != base[k]]
        ref = None if n in frozen else reference(n, st)
        gain = None if ref is None else a["test_auc_mean"] - agg[ref]["test_auc_mean"]
        rows.append([n, st.get("backbone"), "yes" if st.get("dap") else "–", "yes" if st.get("align") else "–",
                     ", ".join(other) or "–", str(a["n_ok"]), _f(a["valid_auc_mean"]),
                     _pm(a["test_auc_mean"], a["test_auc_std"]),
                     "–" if gain is None else f"{gain:+.4f} ({ref})"])
    return rows


def ablation_section(report, names):
    lines = []
    rows = ablation_rows(report["aggregates"], names)
    if rows:
        lines += ["## CELA ablation: what each stage buys", "",
                  "Stage 1 = domain-adaptive pretraining (MLM + SimCSE), stage 2 = alignment with the "
                  "frozen ID backbone; \"other settings\" differ from the `CELA` row's. Valid AUC: mean "
                  "over seeds (the selection criterion); Δ: test AUC minus that of the frozen-vector row "
                  "(neither stage) with the same backbone and the closest fusion settings, named.", "",
                  _table(["variant", "backbone", "stage 1", "stage 2", "other settings", "runs",
                          "valid AUC", "test AUC", "Δ vs frozen vectors"], rows), ""]
    missing = [r for r in report["runs"] if r["status"] == "not run"]
    if missing:
        lines += ["Not run (no finished run when this report was written): " +
                  ", ".join(f"{r['variant']} seed {r['seed']}" for r in missing) + ".", ""]
    failed = [r for r in report["runs"] if r["status"] == "failed"]
    if failed:
        lines += ["## Failed runs", ""]
        for r in failed:
            code = r.get("returncode")
            code = "" if code is None else f" (exit code {code})"
            lines += [f"**{r['variant']}**, seed {r['seed']}{code}:", "",
                      "```", r.get("error_tail") or "(no output)", "```", ""]
    return lines


def _stage_cell(s):
    if not s:
        return "–"
    if s["cached_any"]:
        cost = s.get("cost_s_mean")
        return "reused" + ("" if cost is None else f", made in {_num(cost)}")
    return _num(s["time_s_mean"])


def stages_table(agg, cela):
    rows = []
    for n in cela:
        stages = agg[n].get("stages") or {}
        row = [n] + [_stage_cell(stages.get(stage)) for stage in STAGES]
        row += [_num(get(stages, stage, "items_per_s_mean")) for stage in TEXT_STAGES]
        rows.append(row + [_num(agg[n]["fit_time_s_mean"]), _num(agg[n].get("end_to_end_s_mean"))])
    return [_table(["variant"] + [f"{s} (s)" for s in STAGES] + [f"{s} items/s" for s in TEXT_STAGES]
                   + ["this run's fit (s)", "end to end (s)"], rows), "",
            "Mean wall time per stage over seeds. \"reused, made in X\": for at least one "
            "seed the stage's artifact came from `saved/cela/<dataset>/` (made by an earlier "
            "run with the same data and settings, which took X s, as recorded in its "
            "`stage.json`; its items/s is that run's). \"End to end\" adds every stage at "
            "what it cost to make, so it is what CELA costs from scratch; the ratio below "
            "uses it.", ""]


def cost_table(cost):
    if not cost:
        return ["No cost ratios: DIN is not part of this run.", ""]
    targets, rows = registry.targets(), []
    for n, c in cost.items():
        rows.append([n, _x(c["time_ratio"]), _ok(c["time_ok"]), _x(c["throughput_ratio"]), _ok(c["throughput_ok"]),
                     "all stages" if c.get("end_to_end") else
                     ("this run's fit only (reused stages without a recorded cost: understated)"
                      if c["stages_cached"] else "all stages")])
    return [_table(["variant", "total time / DIN fit", f"≤ {targets['time_ratio']:g}×",
                    "eval throughput / DIN", f"≥ {targets['throughput_ratio']:g}×", "time counted"], rows), ""]


def _cores(value):
    return "not recorded" if value is None else f"{value:.2f}"


def on_top_table(on_top):
    """CELA on top of a trained row's run vs from scratch, per seed, with each run's load."""
    if not on_top:
        return []
    targets, lines = registry.targets(), []
    for n, block in on_top.items():
        src = block["source"]
        rows = [[s["seed"], _num(s["source_fit_s"]), " + ".join(s["stages"]), _num(s["on_top_s"]),
                 _x(s["on_top_ratio"]), _x(s["scratch_ratio"]), _cores(s["source_other_cores"]),
                 _cores(s["other_cores"])] for s in block["seeds"]]
        rows.append(["mean", "", "", "", _x(block["on_top_ratio_mean"]) + f" ({_ok(block['on_top_ok'])} "
                     f"≤ {targets['on_top_ratio']:g}×)", _x(block["scratch_ratio_mean"]) + f" ({_ok(block['scratch_ok'])} "
                     f"≤ {targets['scratch_ratio']:g}×)", "", ""])
        lines += [f"**{n}: CELA on top of the {src} row's trained run** (its `backbone_checkpoint`, same seed):", "",
                  _table(["seed", f"{src} fit (s)", f"{n} stages counted", "their cost (s)", f"on top / {src} fit",
                          f"from scratch / {src} fit", f"{src} run: other cores", f"{n} run: other cores"], rows), "",
                  f"On top = CELA's stages after the backbone (alignment, table, fusion; stage 1 when it runs, each "
                  f"at what it cost to make) over the {src} run's fit; from scratch = that fit plus the same, as "
                  f"if CELA trained its own {src}. \"Other cores\": mean CPU cores other processes used while each "
                  f"run ran (the benchmark's record in its run folder): compare ratios made under similar loads.", ""]
    return lines


def diagnostics_rows(agg, cela):
    rows = []
    for n in cela:
        stages = agg[n].get("stages") or {}
        dap = get(stages, "dap", "diagnostics") or {}
        # A decoder's stage 1 reports its causal-LM loss where an encoder reports the MLM loss.
        for key in ("mlm_loss", "clm_loss", "alignment", "uniformity"):
            before, after = get(dap, "diagnostics_before", key), get(dap, "diagnostics_after", key)
            if before is not None or after is not None:
                rows.append([n, f"DAP {key} (lower is better)", _f(before), _f(after), "–"])
        align = get(stages, "align", "diagnostics") or {}
        n_items = get(align, "diagnostics_after", "n_items") or get(align, "diagnostics_before", "n_items")
        n_items = int(round(n_items)) if n_items else None
        chance = {
            "recall@1": 1 / n_items if n_items else None,
            "recall@10": min(1.0, 10 / n_items) if n_items else None,
            "mean_rank": (n_items + 1) / 2 if n_items else None,
        }
        for key in ("recall@1", "recall@10", "mean_rank"):
            before, after = get(align, "diagnostics_before", key), get(align, "diagnostics_after", key)
            if before is not None or after is not None:
                rows.append([n, f"alignment {key} (held-out items, n={n_items})", _f(before),
                             _f(after), _f(chance[key])])
    return rows


def cela_section(report, names, figures):
    agg, comp = report["aggregates"], report["comparisons"]
    cela = [n for n in names if registry.is_cela(n)]
    if not cela:
        return []
    lines = ["## CELA stages", ""] + stages_table(agg, cela) + cost_table(comp.get("cost") or {})
    lines += on_top_table(comp.get("on_top") or {})
    lines += [f"![CELA stages]({figures['stages']})", ""]
    rows = diagnostics_rows(agg, cela)
    lines += ["## CELA diagnostics", ""]
    if rows:
        return lines + [_table(["variant", "metric", "before", "after", "chance"], rows), "",
                        "DAP: held-out items' MLM loss and SimCSE alignment / uniformity before and "
                        "after stage 1. Alignment: text→ID retrieval among the held-out items before "
                        "and after stage 2. Means over seeds.", ""]
    return lines + ["No text stage ran in these variants (no diagnostics).", ""]


DIAGNOSTICS = [  # (label, the pretraining's score, its baseline, the baseline's name)
    ("masked tokens (MLM)", "mlm_accuracy", "mlm_majority", "most frequent token"),
    ("masked fields (MTM)", "mtm_accuracy", "mtm_majority", "most frequent value"),
    ("contrast recall@1", "icl_recall@1", "icl_chance", "chance, 1 / batch"),
]


def _paired(agg, a, b):
    """Per-seed test AUC differences a - b over the seeds both have: (mean, min, max, n)."""
    sa, sb = get(agg, a, "test_auc_by_seed") or {}, get(agg, b, "test_auc_by_seed") or {}
    if get(agg, b, "deterministic"):  # Pop: one score for every seed
        sb = {seed: get(agg, b, "test_auc_mean") for seed in sa}
    diffs = [sa[k] - sb[k] for k in sa if k in sb]
    return (float(np.mean(diffs)), min(diffs), max(diffs), len(diffs)) if diffs else None


def flip_targets(agg, flip):
    """The FLIP issue's two targets, where their rows ran: text alone vs Pop, joint vs its own ID
    model. Both compare paired seeds (joint and idOnly share each seed's pretraining and ID model)."""
    def setting(name, key):  # what the row's runs recorded
        return (agg[name].get("settings") or {}).get(key)

    lines = []
    pairs = [(n, "Pop") for n in flip if setting(n, "flip_finetune") == "text"]
    id_rows = {setting(n, "flip_backbone"): n for n in flip if setting(n, "flip_finetune") == "id"}
    pairs += [(n, id_rows.get(setting(n, "flip_backbone"))) for n in flip if setting(n, "flip_finetune") == "joint"]
    for a, b in pairs:  # a joint row against the idOnly row of its ID model
        if b not in agg:
            continue
        verdict = compare(agg, a, b)
        paired = _paired(agg, a, b)
        if verdict["diff"] is None:
            continue
        spread = "one seed: no spread" if verdict["spread"] is None else f"spread {verdict['spread']:.4f}"
        seeds = ""
        if paired and paired[3] == 1:
            seeds = f"; in the one seed both ran {paired[0]:+.4f}"
        elif paired:
            seeds = (f"; per seed {paired[0]:+.4f} on average, from {paired[1]:+.4f} to {paired[2]:+.4f} "
                     f"({paired[3]} seeds)")
        word = {"beats": "above, by more than the spread", "loses": "below, by more than the spread",
                "within": "within the spread"}.get(verdict["verdict"], "no verdict")
        lines.append(f"- {a} vs {b}: {verdict['diff']:+.4f} test AUC ({spread}): {word}{seeds}.")
    return lines


def diagnostics_table(agg, flip):
    """One row per pretraining artifact (variants sharing one report it once)."""
    groups = {}
    for n in flip:
        pre = get(agg, n, "stages", "pretrain", "diagnostics")
        if pre:
            groups.setdefault(repr(sorted((w, sorted(d.items())) for w, d in pre.items())), (pre, []))[1].append(n)
    rows = []
    for pre, names in groups.values():
        before, after = pre.get("diagnostics_before", {}), pre.get("diagnostics_after", {})
        for label, key, base, base_name in DIAGNOSTICS:
            if key in after or key in before:
                rows.append([", ".join(names), label, _f(before.get(key)), _f(after.get(key)),
                             f"{_f(after.get(base, before.get(base)))} ({base_name})"])
        if "valid_loss" in after:
            rows.append([", ".join(names), "held-out loss (sum of the three)", _f(before.get("valid_loss")),
                         _f(after.get("valid_loss")), "–"])
    return rows


def flip_section(report, names):
    agg = report["aggregates"]
    flip = [n for n in names if registry.model_of(n) == "FLIP"]
    if not flip:
        return []
    rows = []
    for n in flip:
        stages = agg[n].get("stages") or {}
        row = [n]
        for stage in FLIP_STAGES:
            s = stages.get(stage)
            cost = s and (s["cost_s_mean"] if s["cost_s_mean"] is not None else s["time_s_mean"])
            row.append("–" if not s else _num(cost) + (" (shared)" if s["cached_any"] else ""))
        rows.append(row + [_num(get(stages, "finetune", "items_per_s_mean")), _num(agg[n]["fit_time_s_mean"]),
                           _num(agg[n]["eval_samples_per_s_mean"])])
    lines = ["## FLIP", "", "### Stages", "",
             _table(["variant"] + [f"{s} (s)" for s in FLIP_STAGES]
                    + ["fine-tuning interactions/s", "total fit (s)", "eval samples/s"], rows), "",
             "Mean cost per stage over seeds: what making the artifact cost, also where a run reused "
             "it (\"(shared)\": reused from `saved/flip/<dataset>/` by at least one seed; the pretraining "
             "is shared by every seed and strategy, the ID model by a seed's idOnly and joint runs); "
             "total fit is the run's own wall time. Pretraining and the text fine-tuning read "
             "samples on a CPU (flip_pretrain_samples, flip_finetune_samples; docs/FLIP.md).", ""]
    budget = []
    for n in flip:
        c = agg[n].get("settings") or {}
        if c:
            def size(n):
                return "all" if n is None or n < 0 else _num(n)

            budget.append([n, c.get("flip_backbone"), f"{size(c.get('flip_pretrain_samples'))} × {c.get('flip_pretrain_epochs')}",
                           f"{size(c.get('flip_finetune_samples'))} × {c.get('flip_text_epochs')}",
                           c.get("flip_max_prompt_length"), c.get("flip_text_eval_step"), c.get("flip_freeze_backbone"),
                           c.get("text_amp")])
    if budget:
        lines += ["Settings (the runs' recorded config): pretraining reads a seeded sample of training "
                  "interactions (flip_pretrain_valid_ratio of it held out), the text strategies a fresh sample per epoch; the ID "
                  "model always trains on every interaction.", "",
                  _table(["variant", "ID model", "pretraining interactions × epochs",
                          "text fine-tuning interactions × epochs", "prompt cap (tokens)",
                          "validate every (epochs; 0: never)", "backbone frozen (joint)", "text_amp"], budget), ""]
    targets = flip_targets(agg, flip)
    if targets:
        lines += ["### Targets", ""] + targets + [""]
    diag = diagnostics_table(agg, flip)
    if diag:
        lines += ["### Pretraining diagnostics", "",
                  "On the held-out part of the pretraining sample, before and after pretraining: "
                  "accuracy at masked tokens and masked ID fields (argmax over the whole vocabulary) "
                  "and contrast recall@1 within a batch, each beside the guess it has to beat.", "",
                  _table(["variants", "objective", "before", "after", "baseline"], diag), ""]
    cost = report.get("flip_cost")
    if cost:
        from benchmarks.flip_cost import table

        lines += ["### Throughput (interactions/s)", "", f"`{cost['command']}` ({cost['date']}; other processes "
                  f"used {cost['other_cpu_cores']:.2f} cores on average while it measured):", "", table(cost), ""]
    return lines


def buckets_section(report, names, figures):
    agg = report["aggregates"]
    bucket_names = []
    for n in names:
        bucket_names += [b for b in agg[n]["buckets"] if b not in bucket_names]
    if not bucket_names:
        return []
    ns = {b: next((agg[n]["buckets"][b]["n"] for n in names if b in agg[n]["buckets"]), None) for b in bucket_names}
    rows = [[n] + [_f(get(agg, n, "buckets", b, "auc_mean")) for b in bucket_names] for n in names]
    return ["## Test AUC by item popularity", "",
            "Buckets: positive training samples of the test item; mean over seeds.", "",
            _table(["variant"] + [f"{b} (n={ns[b]})" for b in bucket_names], rows), "",
            f"![AUC by popularity]({figures['buckets']})", ""]


def verdict_section(report, figures):
    comp, dataset = report["comparisons"], report["dataset"]
    lines = ["## Is CELA better?", ""]
    ref = comp.get("reference")
    if ref is None:
        lines += ["No CELA variant finished in this run: no comparison.", ""]
    else:
        if ref != "CELA":
            lines += [f"`CELA` itself is not in this run: the comparisons below use **{ref}**.", ""]
        gain = comp.get("gain_over_din")
        lines += [gain_line(ref, "DIN", gain) if gain else "DIN is not in this run (or failed): no gain over DIN.", ""]
        lines += [f"- {verdict_sentence(ref, n, c)}" for n, c in comp["vs"].items()]
        for other, block in (comp.get("more") or {}).items():
            lines += ["", f"### {other}", ""]
            gain = block.get("gain_over_id")
            if gain:
                lines += [gain_line(other, f"{block['id_row']} (its backbone, ID only)", gain), ""]
            lines += [f"- {verdict_sentence(other, n, c)}" for n, c in block["vs"].items()]
        lines += ["", "\"Spread\" = the larger of the two variants' seed-to-seed standard deviations "
                  "of test AUC; a difference inside it is not claimed as a win.", ""]
    return lines + [f"![cost vs AUC]({figures['cost']})", "",
                    "Raw results (every run's JSON, with its config) are in "
                    f"`{dataset}.json` and `runs/{dataset}/`.", ""]


def render_markdown(report, names, figures):
    lines = header_section(report)
    lines += results_section(report, names, figures)
    lines += ablation_section(report, names)
    lines += cela_section(report, names, figures)
    lines += flip_section(report, names)
    lines += buckets_section(report, names, figures)
    lines += verdict_section(report, figures)
    return "\n".join(lines)


def write_report(out, dataset, names, records, settings, command, split_counts_=None, references=()):
    """Aggregate ``records`` and write ``<out>/<dataset>.{json,md}`` and the PNGs."""
    from recbole_cela.fileio import atomic_write, atomic_write_json, read_json

    os.makedirs(out, exist_ok=True)
    agg = aggregate(records, names)
    comp = comparisons(agg, names, references, records)
    quick = settings.get("quick")
    report = {
        "title": f"Smoke check (--quick) — {dataset}" if quick else f"Benchmark — {dataset}",
        "command": command,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(records),
        "dataset": dataset,
        "split_counts": split_counts_ or {},
        "settings": settings,
        "variants": {n: registry.as_recorded(n) for n in names},
        "aggregates": agg,
        "comparisons": comp,
        "runs": records,
    }
    flip_cost = os.path.join(out, f"{dataset}-flip-cost.json")
    if os.path.isfile(flip_cost):  # benchmarks.flip_cost's measurement, shown in the FLIP section
        report["flip_cost"] = read_json(flip_cost)
    figures = {kind: f"{dataset}-{kind}.png" for kind in FIGURES}
    plots.write_all(agg, names, {k: os.path.join(out, v) for k, v in figures.items()}, dataset,
                    " (smoke check)" if quick else "")
    atomic_write_json(os.path.join(out, f"{dataset}.json"), report)
    atomic_write(os.path.join(out, f"{dataset}.md"), render_markdown(report, names, figures))
    return report

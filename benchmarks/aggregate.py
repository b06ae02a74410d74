"""Run records -> per-variant means / stds, popularity buckets, stage costs, and the comparisons
the report states (verdicts against the seed spread, gains over DIN, cost ratios)."""

from benchmarks import registry
from benchmarks.common import STAGES, get, mean, mean_std, ratio

def ablation_keys():
    """The CELA settings that tell its benchmark rows apart: the stage switches and every key a
    CELA row of ``benchmarks/variants.yaml`` sets, so a new row's setting is listed without more code."""
    keys = ["backbone", "dap", "align"]
    for spec in registry.variants().values():
        if spec.get("model") == "CELA":
            keys += [a[2:].split("=", 1)[0] for a in spec.get("args") or [] if a.startswith("--")]
    return list(dict.fromkeys(keys))


def stage_cost(stage):
    """What a stage cost to make: its time, or for a reused artifact the time recorded when it
    was made (``original_time_s``; None for artifacts made before that was recorded)."""
    return stage.get("original_time_s") if stage.get("cached") else stage.get("time_s")


def end_to_end_cost(stages):
    """CELA's cost with every stage included (reused artifacts at their original cost)."""
    costs = [stage_cost(s) for s in stages.values() if s]
    return None if not costs or None in costs else sum(costs)


def cela_defaults():
    """props/CELA.yaml as the library finds it (read once per process; callers only read it)."""
    from recbole_cela.utils import props_file, read_yaml

    return read_yaml(props_file("CELA"))


# FLIP settings the report states per variant: its ID model and the CPU budget of its text tower.
FLIP_KEYS = ["flip_finetune", "flip_backbone", "flip_pretrain_samples", "flip_pretrain_epochs", "flip_finetune_samples",
             "flip_text_epochs", "flip_max_prompt_length", "flip_text_eval_step", "flip_freeze_backbone", "text_amp"]


def settings_of(results):
    """The ablation_keys() of a CELA variant's runs (from their recorded config), FLIP_KEYS of a
    FLIP variant's, else None."""
    flip = [r.get("config") or {} for r in results if (r.get("config") or {}).get("model") == "FLIP"]
    if flip:
        return {k: flip[0].get(k) for k in FLIP_KEYS}
    configs = [r.get("config") or {} for r in results if (r.get("config") or {}).get("model") == "CELA"]
    if not configs:
        return None
    # A run made before a key existed ran what is now that key's props default (e.g. align_target).
    defaults = cela_defaults()
    return {k: configs[0].get(k, defaults.get(k)) for k in ablation_keys()}


def _buckets(results, deterministic):
    """Test AUC per popularity bucket: {bucket: {n, auc_mean, auc_std}}."""
    names = []
    for r in results:
        names += [b for b in r.get("test_auc_by_popularity") or {} if b not in names]
    out = {}
    for b in names:
        values = [v for v in (get(r, "test_auc_by_popularity", b) for r in results) if v]
        m, std = mean_std([v.get("auc") for v in values])
        out[b] = {"n": values[0].get("n") if values else None, "auc_mean": m,
                  "auc_std": 0.0 if deterministic and m is not None else std}
    return out


def _stages(stage_results):
    """Per stage (CELA's order first, then any other model's): mean time, cost, throughput,
    whether any seed reused it, and the mean diagnostics before / after."""
    names = list(STAGES)
    for result in stage_results:
        names += [stage for stage in result if stage not in names]
    stages = {}
    for stage in names:
        present = [s[stage] for s in stage_results if s.get(stage)]
        if not present:
            continue
        costs = [stage_cost(p) for p in present]
        stages[stage] = {
            "time_s_mean": mean([p.get("time_s") for p in present]),
            "cost_s_mean": None if None in costs else mean(costs),
            "items_per_s_mean": mean([p.get("items_per_s") for p in present]),
            "cached_any": any(p.get("cached") for p in present),
            "n": len(present),
        }
        diagnostics = {}
        for when in ("diagnostics_before", "diagnostics_after"):
            keys = sorted({k for p in present for k in (p.get(when) or {})})
            diagnostics[when] = {k: mean([get(p, when, k) for p in present]) for k in keys}
        if any(diagnostics.values()):
            stages[stage]["diagnostics"] = diagnostics
    return stages


def _entry(recs):
    """One variant's aggregate from its run records."""
    results = [r["result"] for r in recs if r["status"] == "ok"]
    auc = mean_std([get(r, "test_result", "auc") for r in results])
    loss = mean_std([get(r, "test_result", "logloss") for r in results])
    deterministic = bool(results) and all(r.get("seed") is None for r in results)
    entry = {
        "n_ok": len(results),
        "n_failed": sum(r["status"] == "failed" for r in recs),
        "seeds": [r["seed"] for r in recs if r["status"] == "ok"],
        "deterministic": deterministic,
        "test_auc_mean": auc[0],
        "test_auc_std": 0.0 if deterministic else auc[1],
        "test_auc_by_seed": {str(r.get("seed")): get(r, "test_result", "auc") for r in results},
        "test_logloss_mean": loss[0],
        "test_logloss_std": 0.0 if deterministic else loss[1],
        "valid_auc_mean": mean([get(r, "best_valid_result", "auc") for r in results]),
        "fit_time_s_mean": mean([r.get("fit_time_s") for r in results]),
        "eval_time_s_mean": mean([r.get("eval_time_s") for r in results]),
        "eval_samples_per_s_mean": mean([r.get("eval_samples_per_s") for r in results]),
        "peak_rss_mb_max": max([r["peak_rss_mb"] for r in results if r.get("peak_rss_mb")], default=None),
        "n_params": next((r.get("n_params") for r in results if r.get("n_params") is not None), None),
        "buckets": _buckets(results, deterministic),
        "stages": None,
        "settings": settings_of(results),
    }
    stage_results = [r["stages"] for r in results if r.get("stages")]
    if stage_results:
        entry["stages"] = _stages(stage_results)
        totals = [end_to_end_cost(s) for s in stage_results]
        entry["end_to_end_s_mean"] = None if None in totals else mean(totals)
    return entry


def aggregate(records, names):
    """Per variant: metric means/stds over its successful seeds, costs, stages and buckets."""
    return {name: _entry([r for r in records if r["variant"] == name]) for name in names}


def compare(agg, ref, other):
    """Does ``ref`` beat ``other`` on test AUC by more than the seed-to-seed spread?

    spread = max of the two stds (a deterministic variant has std 0; one seed has none).
    verdict: 'beats' (diff > spread), 'loses' (diff < -spread), 'within', or 'unknown'.
    """
    a, b = agg.get(ref) or {}, agg.get(other) or {}
    if a.get("test_auc_mean") is None or b.get("test_auc_mean") is None:
        return {"diff": None, "spread": None, "verdict": "unknown", "reason": "no successful run"}
    diff = a["test_auc_mean"] - b["test_auc_mean"]
    stds = [a.get("test_auc_std"), b.get("test_auc_std")]
    if any(s is None for s in stds):
        return {"diff": diff, "spread": None, "verdict": "unknown",
                "reason": "one seed: the seed-to-seed spread is unknown"}
    spread = max(stds)
    verdict = "beats" if diff > spread else "loses" if diff < -spread else "within"
    return {"diff": diff, "spread": spread, "verdict": verdict}


def reference_cela(agg, names):
    """The CELA variant the comparisons are about: 'CELA' when it ran, else the first CELA-family
    variant with a result."""
    if get(agg, "CELA", "test_auc_mean") is not None:
        return "CELA"
    for name in names:
        if registry.is_cela(name) and get(agg, name, "test_auc_mean") is not None:
            return name
    return None


def gain_over(agg, ref, base):
    """Test AUC of ``ref`` minus ``base``'s, overall and per popularity bucket (None without base)."""
    b_agg = agg.get(base) or {}
    if b_agg.get("test_auc_mean") is None:
        return None
    gain = {"overall": agg[ref]["test_auc_mean"] - b_agg["test_auc_mean"], "buckets": {}}
    for b, v in agg[ref]["buckets"].items():
        d = b_agg["buckets"].get(b) or {}
        if v.get("auc_mean") is not None and d.get("auc_mean") is not None:
            gain["buckets"][b] = v["auc_mean"] - d["auc_mean"]
    return gain


def id_row(agg, ref):
    """The ID-only row of a CELA variant: the variant named like its backbone (DIN, DINUser, ...)."""
    backbone = (get(agg, ref, "settings") or {}).get("backbone") or "DIN"
    return backbone if backbone in registry.variants() else "DIN"


def cost_ratios(agg, names):
    """Each CELA variant's training time (every stage at its cost to make) and evaluation
    throughput against DIN's, with the registry's targets."""
    din, targets, out = agg.get("DIN"), registry.targets(), {}
    for name in names:
        if not registry.is_cela(name) or not din:
            continue
        a = agg.get(name) or {}
        end_to_end = a.get("end_to_end_s_mean")
        t = ratio(end_to_end if end_to_end is not None else a.get("fit_time_s_mean"), din.get("fit_time_s_mean"))
        e = ratio(a.get("eval_samples_per_s_mean"), din.get("eval_samples_per_s_mean"))
        out[name] = {
            "time_ratio": t,
            "time_ok": None if t is None else t <= targets["time_ratio"],
            "throughput_ratio": e,
            "throughput_ok": None if e is None else e >= targets["throughput_ratio"],
            "stages_cached": any(s.get("cached_any") for s in (a.get("stages") or {}).values()),
            "end_to_end": end_to_end is not None,
        }
    return out


def comparisons(agg, names, references=(), records=()):
    """CELA (or the first of ``references`` that has a result) against every other row and against
    DIN; each further reference (e.g. CELA over another backbone) against every row and against
    its own ID-only backbone row, under ``more``; cost ratios; and for variants with
    ``backbone_from``, the cost on top of that row's run (``on_top``, from ``records``)."""
    refs = [r for r in references if get(agg, r, "test_auc_mean") is not None]
    ref = refs[0] if refs else reference_cela(agg, names)
    out = {"reference": ref, "vs": {}, "gain_over_din": None, "cost": {}, "more": {}}
    if ref is None:
        return out
    out["vs"] = {name: compare(agg, ref, name) for name in names if name != ref}
    out["gain_over_din"] = gain_over(agg, ref, "DIN")
    for other in refs[1:]:
        base = id_row(agg, other)
        out["more"][other] = {"vs": {n: compare(agg, other, n) for n in names if n != other},
                              "id_row": base, "gain_over_id": gain_over(agg, other, base)}
    out["cost"] = cost_ratios(agg, names)
    on_top = on_top_costs(records, names)
    if on_top:
        out["on_top"] = on_top
    return out


def _on_top_seed(record, source):
    """One seed of a ``backbone_from`` variant: its text stages and fusion at their cost, and the
    source row's fit, with the load each run shared."""
    stages = get(record, "result", "stages") or {}
    costs = [stage_cost(s) for name, s in stages.items() if s and name != "backbone"]
    on_top = None if not costs or None in costs else sum(costs)
    fit = get(source, "result", "fit_time_s")
    return {
        "seed": record["seed"], "source_fit_s": fit, "on_top_s": on_top,
        "scratch_s": None if fit is None or on_top is None else fit + on_top,
        "on_top_ratio": ratio(on_top, fit), "scratch_ratio": ratio(None if on_top is None else fit + on_top, fit),
        "source_other_cores": source.get("other_cpu_cores"), "other_cores": record.get("other_cpu_cores"),
        "stages": [name for name, s in stages.items() if s and name != "backbone"],
    }


def on_top_costs(records, names):
    """For each variant with ``backbone_from``: per seed, CELA on top of that row's trained run
    (its stages but the backbone) and from scratch (that run's fit + the same) over the row's fit,
    with the targets of the registry. {} when no such variant finished."""
    targets, out = registry.targets(), {}
    ok = {(r["variant"], r["seed"]): r for r in records if r.get("status") == "ok"}
    for name in names:
        source = registry.backbone_source(name)
        seeds = [_on_top_seed(r, ok[(source, r["seed"])]) for (n, _), r in ok.items()
                 if n == name and (source, r["seed"]) in ok]
        if not seeds:
            continue
        on_top, scratch = mean([s["on_top_ratio"] for s in seeds]), mean([s["scratch_ratio"] for s in seeds])
        out[name] = {"source": source, "seeds": seeds, "on_top_ratio_mean": on_top, "scratch_ratio_mean": scratch,
                     "on_top_ok": None if on_top is None else on_top <= targets["on_top_ratio"],
                     "scratch_ok": None if scratch is None else scratch <= targets["scratch_ratio"]}
    return out

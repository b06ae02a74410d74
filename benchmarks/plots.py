"""The report's figures: test AUC per row, gain over DIN per popularity bucket, training cost vs
AUC, and CELA's stage times against DIN's fit."""

from benchmarks import registry
from benchmarks.common import STAGES, get

ID_ROWS_SHOWN = 4  # the best ID models besides DIN in the bucket figure; the others are in the table
PANELS = [("ID models", ("id",)), ("text baselines", ("text",)), ("CELA and its stage ablation", ("cela", "ablation"))]
MARKERS = "osD^vP*Xh<>"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    from recbole_cela.fileio import atomic_open

    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)


def _color(name):
    if name == "Pop":
        return "#999999"
    if registry.is_cela(name):
        return "#d62728"
    if name.startswith("DIN"):
        return "#1f77b4"
    return "#2ca02c"


def plot_auc(agg, names, path, title):
    plt = _plt()
    shown = [n for n in names if get(agg, n, "test_auc_mean") is not None]
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(shown) + 2), 4))
    means = [agg[n]["test_auc_mean"] for n in shown]
    errs = [agg[n]["test_auc_std"] or 0 for n in shown]
    ax.bar(range(len(shown)), means, yerr=errs, capsize=3, color=[_color(n) for n in shown])
    for x, (m, e) in enumerate(zip(means, errs)):
        ax.text(x, m + e, f"{m:.4f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(shown)), shown, rotation=45, ha="right")
    if means:
        low = min(m - e for m, e in zip(means, errs))
        high = max(m + e for m, e in zip(means, errs))
        ax.set_ylim(max(0.0, low - 0.05), min(1.0, high + 0.03))
    ax.set_ylabel("test AUC (mean ± std over seeds)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def bucket_panels(agg, names):
    """[(panel title, [rows])] of the bucket figure: the best ``ID_ROWS_SHOWN`` ID rows besides DIN
    by test AUC, every text baseline, CELA's rows and its stage ablation (registry groups), each
    with buckets; panels without rows are left out."""
    with_buckets = [n for n in names if n != "DIN" and get(agg, n, "buckets")]
    panels = []
    for title, groups in PANELS:
        rows = [n for n in with_buckets if registry.variants().get(n, {}).get("group") in groups]
        if groups == ("id",):
            rows = sorted(rows, key=lambda n: -(agg[n]["test_auc_mean"] or 0))[:ID_ROWS_SHOWN]
            rows = [n for n in names if n in rows]  # report order
        if rows:
            panels.append((title, rows))
    return panels


def _bucket_gains(agg, name, buckets):
    """Test AUC gain of ``name`` over DIN per bucket (None where either has no value)."""
    out = []
    for b in buckets:
        mine, din = get(agg, name, "buckets", b, "auc_mean"), get(agg, "DIN", "buckets", b, "auc_mean")
        out.append(None if mine is None or din is None else mine - din)
    return out


def _reference(agg, panels):
    """The CELA row drawn in every other panel for comparison: ``CELA``, else the panel's first
    row of group cela."""
    cela_rows = [n for _, rows in panels for n in rows if registry.variants()[n]["group"] == "cela"]
    return "CELA" if "CELA" in cela_rows else (cela_rows[0] if cela_rows else None)


def _gain_panel(ax, agg, rows, buckets, title, reference=None):
    """Dodged points (one colour and marker per row) with a line per row across the buckets;
    ``reference`` (a row of another panel) as a dashed grey line."""
    cmap = _plt().get_cmap("tab10")
    if reference and reference not in rows:
        gains = _bucket_gains(agg, reference, buckets)
        points = [(j, g) for j, g in enumerate(gains) if g is not None]
        if points:
            ax.plot(*zip(*points), linestyle="--", color="#777777", linewidth=1.2, label=f"{reference} (for reference)")
    width = 0.7 / max(1, len(rows))
    for i, n in enumerate(rows):
        gains = _bucket_gains(agg, n, buckets)
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(buckets))]
        points = [(x, g) for x, g in zip(xs, gains) if g is not None]
        if not points:
            continue
        seeds = agg[n]["n_ok"]
        label = f"{n} ({seeds} seed{'s' if seeds != 1 else ''})"
        ax.plot(*zip(*points), marker=MARKERS[i % len(MARKERS)], color=cmap(i % 10), linewidth=1,
                markersize=7, label=label)
    ax.axhline(0, color="#333333", linewidth=1)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1, frameon=False)


def plot_buckets(agg, names, path, title):
    """Test AUC gain over DIN per item-popularity bucket, one panel per kind of row."""
    plt = _plt()
    buckets = list(get(agg, "DIN", "buckets") or {})
    panels = bucket_panels(agg, names) if buckets else []
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), 4.6), sharey=True,
                             squeeze=False)
    axes = axes[0]
    if not panels:
        axes[0].text(0.5, 0.5, "no DIN row with per-bucket AUC: no gains to draw", ha="center", va="center",
                     transform=axes[0].transAxes)
        axes[0].set_axis_off()
    ns = {b: get(agg, "DIN", "buckets", b, "n") for b in buckets}
    reference = _reference(agg, panels)
    for ax, (panel, rows) in zip(axes, panels):
        _gain_panel(ax, agg, rows, buckets, panel, reference)
        ax.set_xticks(range(len(buckets)), [f"{b}\n(n={ns[b]})" for b in buckets])
        ax.set_xlabel("positive training samples of the test item", fontsize=8)
    axes[0].set_ylabel("test AUC minus DIN's (mean over seeds)")
    fig.suptitle(f"{title} (DIN: the line at 0; every row's AUC: the table)", fontsize=11)
    _save(fig, path)


def plot_cost(agg, names, path, title):
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for n in names:
        a = agg.get(n) or {}
        if a.get("test_auc_mean") is None:
            continue
        if a.get("fit_time_s_mean") is None:  # not trained (Pop): a horizontal reference line
            ax.axhline(a["test_auc_mean"], color=_color(n), linestyle="--", linewidth=1)
            ax.annotate(f"{n} (no training)", (0.01, a["test_auc_mean"]), xycoords=("axes fraction", "data"),
                        fontsize=7, va="bottom", color="#555555")
            continue
        cost = a.get("end_to_end_s_mean") or a["fit_time_s_mean"]  # CELA: every stage at its cost
        ax.errorbar(cost, a["test_auc_mean"], yerr=a["test_auc_std"] or 0, fmt="o", color=_color(n), capsize=2)
        ax.annotate(n, (cost, a["test_auc_mean"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("training wall time, s (log scale; CELA: all stages end to end)")
    ax.set_ylabel("test AUC")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    _save(fig, path)


def plot_stages(agg, names, path, title):
    plt = _plt()
    target = registry.targets()["time_ratio"]
    cela = [n for n in names if registry.is_cela(n) and agg.get(n, {}).get("stages")]
    bars = (["DIN"] if get(agg, "DIN", "fit_time_s_mean") is not None else []) + cela
    fig, ax = plt.subplots(figsize=(max(5, 1.0 * len(bars) + 3), 4))
    colors = dict(zip(STAGES, ["#9467bd", "#1f77b4", "#ff7f0e", "#8c564b", "#d62728"]))
    for x, n in enumerate(bars):
        if n == "DIN":
            ax.bar(x, agg[n]["fit_time_s_mean"], color="#7f7f7f", label="DIN fit" if x == 0 else None)
            continue
        bottom = 0.0
        for stage in STAGES:
            cached = get(agg, n, "stages", stage, "cached_any")
            t = get(agg, n, "stages", stage, "cost_s_mean" if cached else "time_s_mean")
            if not t:
                continue
            ax.bar(x, t, bottom=bottom, color=colors[stage], label=stage, hatch="//" if cached else None)
            bottom += t
    if bars and bars[0] == "DIN":
        ax.axhline(target * agg["DIN"]["fit_time_s_mean"], color="#555555", linestyle="--",
                   linewidth=1, label=f"{target:g}× DIN fit (target)")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    if unique:
        ax.legend(unique.values(), unique.keys(), fontsize=8)
    ax.set_xticks(range(len(bars)), bars, rotation=30, ha="right")
    ax.set_ylabel("wall time, s (hatched: reused, at its original cost)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def write_all(agg, names, paths, dataset, suffix=""):
    """The four figures of a report; ``paths``: {auc, buckets, cost, stages: file}."""
    plot_auc(agg, names, paths["auc"], f"{dataset}: test AUC{suffix}")
    plot_buckets(agg, names, paths["buckets"], f"{dataset}: test AUC gain over DIN by item popularity{suffix}")
    plot_cost(agg, names, paths["cost"], f"{dataset}: training cost vs AUC{suffix}")
    plot_stages(agg, names, paths["stages"], f"{dataset}: CELA stage times vs DIN{suffix}")

"""`u2qt eval`'s markdown report and plots (per-level utilization, as the paper's Figure 5; a 2-D projection of
source embeddings, as its Figure 4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

BASELINE = "baseline: bag of event texts + tabular sums + activity (raw data)"
CONTINUOUS = "continuous: window embeddings before quantization, pooled"
CONTINUOUS_TEXTS = "continuous: window embeddings before quantization, mean + decoded event texts"
LATENT = "latent: MRQ-VAE's z before quantization, pooled"
DECODED = "decoded tokens: MRQ-VAE codeword sums, pooled"


def mean_over_tasks(report: dict, rep: str, metric: str = "auc") -> float:
    vals = [r[rep][metric] for r in report["results"].values() if rep in r]
    return float(np.mean(vals)) if vals else float("nan")


def table(report: dict, reps: list[str]) -> list[str]:
    tasks = list(report["results"])
    head = "| representation | " + " | ".join(tasks) + " | mean AUC | mean KS | signal retention |"
    lines = [head, "|---" * (len(tasks) + 4) + "|"]
    retention = report.get("retention", {})
    for rep in reps:
        cells = [f"{report['results'][t][rep]['auc']:.3f} ± {report['results'][t][rep]['auc_std']:.3f}" for t in tasks]
        lines.append(
            f"| {rep} | "
            + " | ".join(cells)
            + f" | **{mean_over_tasks(report, rep):.4f}** | {mean_over_tasks(report, rep, 'ks'):.4f}"
            + f" | {retention.get(rep, float('nan')):.2f} |"
        )
    return lines


def token_based(reps) -> list[str]:
    """Representations a ranker can compute from stored tokens alone (with the model's codebooks)."""
    return [r for r in reps if r == DECODED or r.startswith("history model") or r == "bag of tokens: MRQ-VAE"]


def best_token_based(report: dict) -> str:
    reps = next(iter(report["results"].values()))
    return max(token_based(reps), key=lambda r: report["retention"].get(r, float("-inf")))


def targets(report: dict) -> list[str]:
    auc = {r: mean_over_tasks(report, r) for r in next(iter(report["results"].values()))}
    ret = report["retention"]
    mrq, rq = auc["bag of tokens: MRQ-VAE"], auc["bag of tokens: RQ-VAE, shared levels only"]
    # the continuous embeddings by their best reading (a report written before the decoded texts has one)
    best_cont = max((r for r in (CONTINUOUS, CONTINUOUS_TEXTS) if r in ret), key=ret.get)
    cont = auc[best_cont]
    st = report["storage_bytes_per_user"]
    cont_b = next(v for k, v in st.items() if k.startswith("continuous"))
    tok_b = next(v for k, v in st.items() if k.startswith("tokens"))
    h = {k: auc[f"history model: {k}"] for k in ("no pretext task", "S", "S+T+W")}
    c = report["collisions"]
    best = best_token_based(report)

    def mark(ok: bool) -> str:
        return "holds" if ok else "**does not hold**"

    return [
        f"- best token-based representation: **{best}**, retention {ret[best]:.3f} (goal ≥ 0.90), mean AUC "
        f"{auc[best]:.4f} vs continuous {cont:.4f} (gap {cont - auc[best]:+.4f}, goal ≤ 0.02) — "
        f"{mark(ret[best] >= 0.9 and cont - auc[best] <= 0.02)}",
        f"- continuous window embeddings retain {ret[best_cont]:.3f} ({best_cont.split(', ')[-1]}; goal ≥ 0.95) — "
        f"{mark(ret[best_cont] >= 0.95)}",
        f"- storage per user: tokens {tok_b:,.0f} bytes vs continuous {cont_b:,.0f}, {cont_b / tok_b:.0f}× less "
        f"(goal ≥ 100×) — {mark(cont_b / tok_b >= 100)}",
        f"- MRQ-VAE ≥ RQ-VAE (shared levels only), bag of tokens: {mrq:.4f} / {rq:.4f} — {mark(mrq >= rq)}",
        f"- S+T+W ≥ S ≥ no pretext task: {h['S+T+W']:.4f} / {h['S']:.4f} / {h['no pretext task']:.4f} — "
        f"{mark(h['S+T+W'] >= h['S'] >= h['no pretext task'])}",
        f"- user collision rate < 0.5% before the fallback and 0 after: {c['before fallback']:.4%} / "
        f"{c['after fallback']:.4%} — {mark(c['before fallback'] < 0.005 and c['after fallback'] == 0)}",
    ]


def plot_levels(report: dict, out: Path) -> None:
    """Figure 5: share of each level's codes used, per tokenizer variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["utilization"])
    levels = max(len(u) for u in report["utilization"].values())
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        u = report["utilization"][n]
        ax.bar(np.arange(len(u)) + i * width, u, width, label=n)
    ax.set_xticks(np.arange(levels) + 0.4 - width / 2, [f"L{i + 1}" for i in range(levels)])
    ax.set_xlabel("codebook level")
    ax.set_ylabel("share of codes used")
    ax.set_title("Codebook utilization by level (pre-cut-off windows)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "utilization.png", dpi=120)
    plt.close(fig)


def soft_counts_clause(report: dict) -> str:
    features = (report.get("reader") or {}).get("soft_counts") or 0
    if not features:
        return " (the reader `u2qt train` chooses where users have few windows: no soft counts)"
    return (
        f", then log1p of the sum of {features} random ReLU features of its windows (soft counts, standardized by "
        "the windows before the cut-off; the reader `u2qt train` chooses where users have many windows)"
    )


def write_report(report: dict, out: Path, src_emb: np.ndarray, src_names: np.ndarray, toks: dict) -> None:
    """report.md and its two plots into `out`."""
    plot_levels(report, out)
    plot_source_embeddings(src_emb, src_names, out)
    (out / "report.md").write_text(markdown(report))


def plot_source_embeddings(src_emb: np.ndarray, src_names: np.ndarray, out: Path) -> None:
    """Figure 4: a 2-D projection of source embeddings, coloured by source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    pick = rng.permutation(len(src_emb))[:4000]
    xy = PCA(2, random_state=0).fit_transform(src_emb[pick])
    fig, ax = plt.subplots(figsize=(5, 5))
    for s in sorted(set(src_names)):
        m = src_names[pick] == s
        ax.scatter(xy[m, 0], xy[m, 1], s=3, alpha=0.5, label=s)
    ax.set_title("Source embeddings (PCA, 4,000 windows)")
    ax.legend(markerscale=4)
    fig.tight_layout()
    fig.savefig(out / "source_embeddings.png", dpi=120)
    plt.close(fig)


def probe_c(cfg: dict) -> str:
    cs = cfg["probe_cs"]
    if len(cs) == 1:
        return f"C = {cs[0]:g} for every probe"
    grid = ", ".join(f"{c:g}" for c in cs)
    return f"C chosen per split from {{{grid}}} by 3-fold cross-validated AUC on the training users"


def markdown(report: dict) -> str:
    """The report's text: targets, tasks, the paper's tables 3-6 and 8, collisions."""
    reps = list(next(iter(report["results"].values())))
    bags = [r for r in reps if r.startswith("bag of tokens") and "without" not in r]
    optional = [r for r in (CONTINUOUS_TEXTS, LATENT) if r in reps]
    main = [BASELINE, CONTINUOUS, *optional, DECODED, *bags]
    ablation = ["bag of tokens: MRQ-VAE"] + [r for r in reps if "without" in r]
    history = [r for r in reps if r.startswith("history model")]
    cfg = report["config"]
    lines = [
        "# u2qt evaluation report",
        "",
        f"Written by `u2qt eval` ({report['wall_s']:.0f} s). Representations use only data before "
        f"{cfg['cutoff']} (the last {cfg['history_days']} days: the paper's 180); future-behaviour "
        f"labels come from after it. Linear probes: logistic regression on standardized features, {probe_c(cfg)}, "
        f"{len(cfg['seeds'])} seeds of a stratified 70/30 user split, mean ± std. {report['users']} users. "
        "Signal retention = (AUC − 0.5) / (raw-data baseline AUC − 0.5), averaged over tasks: the share of the "
        "raw data's signal a representation keeps. Window vectors (the continuous embeddings, the decoded tokens) "
        "are pooled as GET /users/{id}/embedding?kind=tokens pools them: per source, the mean weighted by each "
        "window's event count, then log1p of the source's windows, events and windows since its newest"
        f"{soft_counts_clause(report)}.",
        "",
        "## Targets from the paper",
        "",
        *targets(report),
        "",
        "## Tasks",
        "",
        "| task | users | positive rate |",
        "|---|---|---|",
        *[f"| {t} | {v['users']} | {v['positive rate']:.2f} |" for t, v in report["tasks"].items()],
        "",
        "## Table 3 — representations (AUC)",
        "",
        *table(report, main),
        "",
        "## Table 4 — MRQ-VAE with one source removed (AUC)",
        "",
        *table(report, ablation),
        "",
        "## Table 5 — history model and pretext tasks (AUC)",
        "",
        "S = semantic-level, T = token-level, W = window-level alignment (λ = "
        + ", ".join(f"{k} {v}" for k, v in cfg["align"]["weights"].items())
        + "). 'No pretext task' is the same model untrained (codebook embeddings through random layers).",
        "",
        *table(report, history),
        "",
        "## Table 6 — storage per user",
        "",
        "| representation | bytes per user |",
        "|---|---|",
        *[f"| {k} | {v:,.0f} |" for k, v in report["storage_bytes_per_user"].items()],
        "",
        "## Collisions and the fallback token (eq. 9)",
        "",
        *[f"- {k}: {v:.4%}" if isinstance(v, float) else f"- {k}: {v}" for k, v in report["collisions"].items()],
        "",
    ]
    lines += ctr_section(report["ctr"]) if report.get("ctr") else []
    lines += [
        "## Plots",
        "",
        "![utilization](utilization.png) ![source embeddings](source_embeddings.png)",
        "",
        "Alignment losses per epoch: "
        + "; ".join(f"{k}: {v[-1] if v else 'untrained'}" for k, v in report["alignment_losses"].items()),
        "",
    ]
    return "\n".join(lines)


def ctr_section(c: dict) -> list[str]:
    """Table 8: the downstream ranking check, with and without tokens."""
    return [
        "## Table 8 — downstream ranking (Appendix C on public data)",
        "",
        f"Will a household buy from each of the {c['categories']} most common product categories in Q4? "
        f"Gradient-boosted trees on (profile one-hot, category) pairs, {c['users']} households with "
        "demographics; with tokens adds a 32-d SVD of the household's MRQ-VAE bag of tokens. HR@K = share of a "
        "test household's Q4 categories (up to K) ranked in its top K.",
        "",
        "| features | AUC | HR@10 | HR@20 |",
        "|---|---|---|---|",
        *[
            f"| {n} | " + " | ".join(f"{c[n][m][0]:.4f} ± {c[n][m][1]:.4f}" for m in ("AUC", "HR@10", "HR@20")) + " |"
            for n in ("profile only", "with tokens")
        ],
        "",
    ]

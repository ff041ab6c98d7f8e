"""Quality figures of a trained tokenizer: codebook usage, perplexity, collisions, reconstruction."""

from __future__ import annotations

import numpy as np
import pandas as pd


def level_stats(
    codes: np.ndarray, source_index: np.ndarray, sources: list[str], shared_levels: int, codebook_size: int
) -> list[dict]:
    """Per level: fraction of its codes used, perplexity of code use, and per-source usage."""
    out = []
    k = codebook_size
    for level in range(codes.shape[1]):
        shared = level < shared_levels
        flat = codes[:, level] if shared else source_index * k + codes[:, level]
        size = k if shared else k * len(sources)
        counts = np.bincount(flat, minlength=size).astype(np.float64)
        p = counts[counts > 0] / counts.sum()
        row = {
            "level": level + 1,
            "kind": "shared" if shared else "specific",
            "used_fraction": float((counts > 0).mean()),
            "perplexity": float(np.exp(-(p * np.log(p)).sum())),
            "by_source": {},
        }
        for i, name in enumerate(sources):
            sel = source_index == i
            if not sel.any():
                continue
            c = np.bincount(codes[sel, level], minlength=k)
            q = c[c > 0] / c.sum()
            row["by_source"][name] = {
                "used_fraction": float((c > 0).mean()),
                "perplexity": float(np.exp(-(q * np.log(q)).sum())),
            }
        out.append(row)
    return out


def collision_stats(codes: np.ndarray, source_index: np.ndarray, input_keys: np.ndarray, sources: list[str]) -> dict:
    """A collision is two *different* inputs (rendered text / features) of one source that get the
    same full token tuple; identical windows getting identical tokens is not one."""
    df = pd.DataFrame(
        {"source": source_index, "key": input_keys, "tuple": [c.tobytes() for c in np.ascontiguousarray(codes)]}
    )
    distinct = df.drop_duplicates(["source", "key"])
    per_tuple = distinct.groupby(["source", "tuple"])["key"].transform("size")
    distinct = distinct.assign(collided=per_tuple > 1)
    result = {"overall": float(distinct["collided"].mean()) if len(distinct) else 0.0, "by_source": {}}
    for i, name in enumerate(sources):
        d = distinct[distinct["source"] == i]
        if len(d):
            result["by_source"][name] = {"distinct_inputs": int(len(d)), "rate": float(d["collided"].mean())}
    result["distinct_inputs"] = int(len(distinct))
    return result


def summarize(codes, source_index, input_keys, recon_cos, holdout, sources, shared_levels, codebook_size):
    recon = {}
    for i, name in enumerate(sources):
        sel = source_index == i
        if sel.any():
            recon[name] = {
                "train_cosine": float(recon_cos[sel & ~holdout].mean()) if (sel & ~holdout).any() else None,
                "holdout_cosine": float(recon_cos[sel & holdout].mean()) if (sel & holdout).any() else None,
                "windows": int(sel.sum()),
            }
    return {
        "windows": int(len(codes)),
        "levels": level_stats(codes, source_index, sources, shared_levels, codebook_size),
        "collisions": collision_stats(codes, source_index, input_keys, sources),
        "reconstruction": recon,
    }


def plot_utilization(summary: dict, path) -> None:
    """Per-level code usage, like the paper's Figure 5: share of codes used and perplexity / K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = summary["levels"]
    labels = [f"L{r['level']}\n{r['kind']}" for r in levels]
    sources = sorted({s for r in levels for s in r["by_source"]})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(1, len(sources))
    for j, s in enumerate(sources):
        xs = [i + (j - (len(sources) - 1) / 2) * width for i in range(len(levels))]
        axes[0].bar(xs, [r["by_source"].get(s, {}).get("used_fraction", 0) for r in levels], width, label=s)
    axes[0].plot(range(len(levels)), [r["used_fraction"] for r in levels], "k_", markersize=30, label="level")
    axes[0].axhline(0.3, color="red", linestyle=":", linewidth=1, label="30% target")
    axes[0].set_title("fraction of codes used")
    axes[0].set_ylim(0, 1.05)
    axes[1].bar(labels, [r["perplexity"] for r in levels], color="gray")
    axes[1].set_title("perplexity of code use (level)")
    for ax in axes:
        ax.set_xticks(range(len(levels)), labels)
    # beside the bars, not over them
    axes[0].legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=6, markerscale=0.3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

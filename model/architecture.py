"""The U2QT model (paper section 4): source encoders -> shared projection -> MRQ-VAE -> source decoders.

    text window   --(frozen text model, ONNX)--> H (text_dim)
    tabular window --TabularEncoder (MLP)------> H (text_dim)
    H --encoder (shared MLP)--> z --ResidualQuantizer--> z_hat --decoder[source]--> reconstruction

Text sources reconstruct their text embedding; tabular sources their standardized features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from u2qt.model.quantizer import ResidualQuantizer


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sources: list[str]
    tabular_features: dict[str, int] = {}  # tabular source -> raw feature count
    text_dim: int = 384
    hidden_dim: int = 256
    code_dim: int = 64
    shared_levels: int = Field(2, ge=0)
    specific_levels: int = Field(2, ge=0)
    codebook_size: int = Field(256, ge=2)
    commitment: float = 0.25  # alpha, eq. 8
    usage_decay: float = 0.99
    # z layer-normalized (no affine) before quantization: its scale cannot drift away from the codewords
    latent_norm: bool = False


def mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))


class TabularEncoder(nn.Module):
    """Standardizes a tabular window's aggregate features (statistics kept as buffers) and maps them
    into the text embedding space (paper eq. 3: H(T) = MLP(T))."""

    def __init__(self, n_features: int, hidden: int, d_out: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.mlp = mlp(n_features, hidden, d_out)

    def standardize(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self.mean) / self.std

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.standardize(raw))


@dataclass
class ModelOutput:
    loss: torch.Tensor
    recon_loss: torch.Tensor
    rq_loss: torch.Tensor
    codes: torch.Tensor
    latent: torch.Tensor
    residuals: list[torch.Tensor]


class U2QTModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = c = config
        self.tabular = nn.ModuleDict(
            {name: TabularEncoder(n, c.hidden_dim, c.text_dim) for name, n in c.tabular_features.items()}
        )
        self.encoder = mlp(c.text_dim, c.hidden_dim, c.code_dim)
        if c.latent_norm:  # appended: no parameters, so the Linear layers keep their checkpoint names
            self.encoder.append(nn.LayerNorm(c.code_dim, elementwise_affine=False))
        self.quantizer = ResidualQuantizer(
            len(c.sources), c.shared_levels, c.specific_levels, c.codebook_size, c.code_dim, c.commitment, c.usage_decay
        )
        # Per-source centering and scale of text embeddings: a text model puts all windows of one source
        # in a narrow cone, so raw, their differences would be swamped by other sources' variance.
        self.register_buffer("source_mean", torch.zeros(len(c.sources), c.text_dim))
        self.register_buffer("source_scale", torch.ones(len(c.sources)))
        self.decoders = nn.ModuleDict(
            {name: mlp(c.code_dim, c.hidden_dim, c.tabular_features.get(name, c.text_dim)) for name in c.sources}
        )

    def source_embedding(
        self, text_emb: torch.Tensor, source: torch.Tensor, features: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """H for every row: the standardized text embedding, or the tabular encoder's output."""
        h = self.standardize_text(text_emb, source)
        for name, enc in self.tabular.items():
            rows = source == self.config.sources.index(name)
            if rows.any():
                h[rows] = enc(features[name][rows])
        return h

    def encode(
        self, text_emb: torch.Tensor, source: torch.Tensor, features: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows' text embeddings or tabular features -> (codes [N, levels], latent z): the tokenizer in PyTorch,
        for models that exist only in training (`u2qt eval`'s variants). Exported, it is the tabular graphs plus
        quantizer.onnx (QuantizerGraph), which TokenizerRuntime.encode_windows runs; `u2qt export` checks that
        the two give the same codes."""
        z = self.encoder(self.source_embedding(text_emb, source, features))
        return self.quantizer.encode(z, source)[0], z

    def standardize_text(self, text_emb: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        return (text_emb - self.source_mean[source]) / self.source_scale[source].unsqueeze(1)

    def target(self, name: str, text_emb, source, features, rows) -> torch.Tensor:
        """What a source's decoder reconstructs: its standardized features or text embedding."""
        if name in self.tabular:
            return self.tabular[name].standardize(features[name][rows])
        return self.standardize_text(text_emb[rows], source[rows])

    def forward(self, text_emb: torch.Tensor, source: torch.Tensor, features: dict[str, torch.Tensor]) -> ModelOutput:
        z = self.encoder(self.source_embedding(text_emb, source, features))
        q = self.quantizer(z, source)
        recon = z.new_zeros(())
        for i, name in enumerate(self.config.sources):
            rows = source == i
            if not rows.any():
                continue
            target = self.target(name, text_emb, source, features, rows)
            # summed over dimensions (not averaged): averaging shrinks the gradient and invites collapse
            recon = recon + ((self.decoders[name](q.quantized[rows]) - target) ** 2).sum()
        recon = recon / len(source)
        return ModelOutput(recon + q.loss, recon, q.loss, q.codes, z, q.residuals)

    @torch.no_grad()
    def reconstruct(self, text_emb, source, features) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (reconstruction, target) per row, padded to text_dim where a tabular source is narrower."""
        z = self.encoder(self.source_embedding(text_emb, source, features))
        _, zq = self.quantizer.encode(z, source)
        out = text_emb.new_zeros(len(source), self.config.text_dim)
        tgt = text_emb.new_zeros(len(source), self.config.text_dim)
        for i, name in enumerate(self.config.sources):
            rows = source == i
            if not rows.any():
                continue
            r = self.decoders[name](zq[rows])
            t = self.target(name, text_emb, source, features, rows)
            out[rows, : r.shape[1]] = r
            tgt[rows, : t.shape[1]] = t
        return out, tgt


class QuantizerGraph(nn.Module):
    """What `quantizer.onnx` computes: source embedding -> (codes, latent z)."""

    def __init__(self, model: U2QTModel):
        super().__init__()
        self.model = model

    def forward(self, source_embedding: torch.Tensor, source_index: torch.Tensor):
        """`source_embedding`: the text embedding of a text window, the tabular encoder's output of a
        tabular window (tabular rows have mean 0 and scale 1, so standardizing leaves them as they are)."""
        m = self.model
        z = m.encoder(m.standardize_text(source_embedding, source_index))
        codes, _ = m.quantizer.encode(z, source_index)
        return codes, z

"""The history model (paper 4.3, T_theta in eq. 10): a small causal transformer over a user's token history.

Token embeddings start from the trained codebooks: token id -> its codeword (frozen), projected to the model
width, plus a level and an age embedding. Causal attention, so h_k summarizes tokens 1..k and can be asked to
predict token k+1 (token-level alignment). The user embedding is the masked mean of the hidden states.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn


class HistoryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vocab_size: int
    code_dim: int
    levels: int
    text_dim: int
    d_model: int = 64
    layers: int = 2
    heads: int = 4
    max_tokens: int = 320  # 80 windows of 4 levels: 26 weekly windows x 3 sources (312); the newest 80 daily ones
    max_age: int = 64


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # fused: no [B, H, T, T] in Python
        x = x + self.out(att.transpose(1, 2).reshape(b, t, d))
        return x + self.ff(self.ln2(x))


class HistoryModel(nn.Module):
    def __init__(self, config: HistoryConfig):
        super().__init__()
        c = self.config = config
        self.register_buffer("token_table", torch.zeros(c.vocab_size, c.code_dim))  # codewords, row 0 = <pad>
        self.token_proj = nn.Linear(c.code_dim, c.d_model)
        self.level_emb = nn.Embedding(c.levels, c.d_model)
        self.age_emb = nn.Embedding(c.max_age + 1, c.d_model)
        self.blocks = nn.ModuleList(Block(c.d_model, c.heads) for _ in range(c.layers))
        self.ln = nn.LayerNorm(c.d_model)
        self.token_head = nn.Linear(c.d_model, c.code_dim)  # eq. 10: h_k -> next token's codeword
        self.semantic_head = nn.Linear(c.d_model, c.text_dim)  # eq. 14: user -> text embedding space

    def hidden(self, ids: torch.Tensor, level: torch.Tensor, age: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        x = self.token_proj(self.token_table[ids]) + self.level_emb(level) + self.age_emb(age)
        causal = torch.ones(t, t, dtype=torch.bool, device=ids.device).tril()
        allowed = causal.unsqueeze(0) & (ids != 0).unsqueeze(1)  # [B, T, T]: earlier, real tokens only
        allowed = allowed | torch.eye(t, dtype=torch.bool, device=ids.device).unsqueeze(0)  # pads see themselves
        allowed = allowed.unsqueeze(1)  # [B, 1, T, T], shared by the heads
        for block in self.blocks:
            x = block(x, allowed)
        return self.ln(x)

    @staticmethod
    def pool(h: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != 0).unsqueeze(-1).to(h.dtype)
        return (h * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def forward(self, ids: torch.Tensor, level: torch.Tensor, age: torch.Tensor) -> torch.Tensor:
        """-> user embedding [B, d_model], L2-normalized (what the service returns)."""
        return F.normalize(self.pool(self.hidden(ids, level, age), ids), dim=-1)

"""MRQ-VAE's quantizer: Lc shared residual levels followed by Lu source-specific levels (paper eq. 4-8).

Each level holds one table of `blocks x K` codewords: one block for a shared level, one block per
source for a specific level. A specific level masks every block but the window's own source before
the argmin, so a source can never select another source's codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # straight-through: forward value = sum of codewords, gradient flows to z
    codes: torch.Tensor  # [B, L] per-level code index within the window's block
    loss: torch.Tensor  # eq. 8: codebook + commitment
    residuals: list[torch.Tensor]  # residual entering each level (detached), for dead-code restarts


def kmeans_centroids(x: np.ndarray, k: int, seed: int, park_within: float | None = None) -> np.ndarray:
    """k centroids of x. With fewer distinct points (or clusters) than k, the spare codewords are either jittered
    copies of the points, which training moves apart or restarts, or, given `park_within`, parked far outside the
    data where no residual ever picks them, after merging centroids closer than `park_within`: near-copies left
    in a final codebook make the argmin a tie that float noise breaks differently by batch and by runtime
    (tests/test_batch.py, the export's ONNX Runtime vs PyTorch check)."""
    import warnings

    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    rng = np.random.default_rng(seed)
    distinct = np.unique(x, axis=0)
    if len(distinct) <= k:
        centroids = distinct
    else:
        with warnings.catch_warnings():
            # residuals that are fewer than k points apart from float noise: k-means repeats a centroid
            warnings.simplefilter("ignore", ConvergenceWarning)
            centroids = KMeans(n_clusters=k, n_init=1, max_iter=100, random_state=seed).fit(x).cluster_centers_
        if park_within is None:
            return centroids.astype(np.float32)
    if park_within is not None:
        centroids = centroids[first_of_near_copies(centroids, park_within)]
        direction = rng.normal(size=(k - len(centroids), x.shape[1]))
        far = 1e3 * (float(np.abs(x).max()) + park_within + 1.0)
        parked = x.mean(0) + far * direction / np.linalg.norm(direction, axis=1, keepdims=True)
        return np.concatenate([centroids, parked]).astype(np.float32)
    reps = distinct[rng.integers(0, len(distinct), size=k - len(distinct))]
    jitter = rng.normal(0, 1e-3, size=reps.shape) * (x.std() + 1e-6)
    return np.concatenate([distinct, reps + jitter]).astype(np.float32)


def first_of_near_copies(points: np.ndarray, tol: float) -> np.ndarray:
    """Indices of `points` with no earlier point within `tol` of them."""
    p = points.astype(np.float64)  # in float32 the expansion's cancellation is larger than a near-copy's distance
    d2 = (p**2).sum(1)[:, None] + (p**2).sum(1)[None, :] - 2.0 * p @ p.T
    near = np.triu(d2 < tol * tol, k=1)
    return np.flatnonzero(~near.any(0))


class ResidualQuantizer(nn.Module):
    def __init__(
        self,
        n_sources: int,
        shared_levels: int,
        specific_levels: int,
        codebook_size: int,
        dim: int,
        commitment: float = 0.25,
        usage_decay: float = 0.99,
    ):
        super().__init__()
        self.n_sources, self.shared_levels, self.specific_levels = n_sources, shared_levels, specific_levels
        self.codebook_size, self.dim = codebook_size, dim
        self.commitment, self.usage_decay = commitment, usage_decay
        self.codebooks = nn.ParameterList(
            nn.Parameter(torch.randn(self.blocks(lvl) * codebook_size, dim) * 0.01) for lvl in range(self.levels)
        )
        for lvl in range(self.levels):
            self.register_buffer(f"usage_{lvl}", torch.ones(self.blocks(lvl) * codebook_size))
        # Survives a checkpoint reload, so a reloaded model never re-runs k-means over trained codebooks.
        self.register_buffer("initted", torch.tensor(False))

    @property
    def levels(self) -> int:
        return self.shared_levels + self.specific_levels

    def blocks(self, level: int) -> int:
        return 1 if level < self.shared_levels else self.n_sources

    def usage(self, level: int) -> torch.Tensor:
        return getattr(self, f"usage_{level}")

    def _nearest(self, level: int, residual: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """Flat row index into level's table of the nearest allowed codeword (eq. 4)."""
        cb = self.codebooks[level]
        # ||r||^2 is the same for every codeword of a row, so it is left out of the argmin.
        dist = (cb * cb).sum(-1).unsqueeze(0) - 2.0 * residual @ cb.t()
        if level >= self.shared_levels:
            block = torch.arange(cb.shape[0], device=cb.device) // self.codebook_size
            dist = dist.masked_fill(block.unsqueeze(0) != source.unsqueeze(1), float("inf"))
        return dist.argmin(-1)

    def forward(self, z: torch.Tensor, source: torch.Tensor) -> QuantizerOutput:
        residual, quantized = z, torch.zeros_like(z)
        codes, residuals, loss = [], [], z.new_zeros(())
        for level in range(self.levels):
            flat = self._nearest(level, residual.detach(), source)
            q = self.codebooks[level][flat]
            loss = loss + ((residual.detach() - q) ** 2).sum(-1).mean()
            loss = loss + self.commitment * ((residual - q.detach()) ** 2).sum(-1).mean()
            residuals.append(residual.detach())
            if self.training:
                counts = torch.bincount(flat, minlength=self.usage(level).numel()).to(z.dtype)
                self.usage(level).mul_(self.usage_decay).add_(counts * (1 - self.usage_decay))
            codes.append(flat % self.codebook_size)
            quantized = quantized + q
            residual = residual - q.detach()  # eq. 5
        straight_through = z + (quantized - z).detach()
        return QuantizerOutput(straight_through, torch.stack(codes, 1), loss, residuals)

    @torch.no_grad()
    def encode(self, z: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference path (exported to ONNX): -> (codes [B, L], quantized z [B, dim])."""
        residual, quantized, codes = z, torch.zeros_like(z), []
        for level in range(self.levels):
            flat = self._nearest(level, residual, source)
            q = self.codebooks[level][flat]
            codes.append(flat % self.codebook_size)
            quantized = quantized + q
            residual = residual - q
        return torch.stack(codes, 1), quantized

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """Codes [B, L] (per-level indices within the window's block) -> their codeword sum z_hat [B, dim]: what a
        reader that holds the codebooks recovers from stored tokens alone."""
        out = torch.zeros(len(codes), self.dim, dtype=self.codebooks[0].dtype)
        for level in range(self.levels):
            block = source if level >= self.shared_levels else torch.zeros_like(source)
            out += self.codebooks[level][block * self.codebook_size + codes[:, level]]
        return out

    @torch.no_grad()
    def init_kmeans(self, z: torch.Tensor, source: torch.Tensor, seed: int, park_spares: bool = False) -> None:
        """Level by level, codebooks become k-means centroids of that level's residuals: the start of training,
        and its end (training/train.py: refit_codebooks), where the trained encoder's z has moved away from the
        codewords gradient descent left it. `park_spares` (the refit): codes are final, so spare codewords are
        parked and centroids closer than 1e-4 of z's scale merged (kmeans_centroids), the same distance at every
        level: a level whose residuals are float noise (windows an earlier level holds exactly) gets one code."""
        residual = z.detach().clone()
        k = self.codebook_size
        within = 1e-4 * float((z.detach() ** 2).sum(-1).mean().sqrt()) if park_spares else None
        for level in range(self.levels):
            table = self.codebooks[level]
            for b in range(self.blocks(level)):
                rows = residual if level < self.shared_levels else residual[source == b]
                if len(rows) == 0:
                    continue
                table.data[b * k : (b + 1) * k] = torch.from_numpy(
                    kmeans_centroids(rows.cpu().numpy(), k, seed + 1000 * level + b, within)
                ).to(table)
            residual -= table[self._nearest(level, residual, source)]
            self.usage(level).fill_(1.0)
        self.initted.fill_(True)

    @torch.no_grad()
    def restart_dead_codes(
        self, residuals: list[torch.Tensor], source: torch.Tensor, threshold: float, generator: torch.Generator
    ) -> dict[int, torch.Tensor]:
        """Moves codes whose usage fell below `threshold` x their block's mean onto residuals of this
        batch, at every level (the official code restarts level 1 only). -> level -> rows moved in its table."""
        k, moved = self.codebook_size, {}
        for level in range(self.levels):
            usage, table = self.usage(level), self.codebooks[level]
            for b in range(self.blocks(level)):
                u = usage[b * k : (b + 1) * k]
                dead = torch.nonzero(u < threshold * u.mean()).flatten()
                rows = residuals[level] if level < self.shared_levels else residuals[level][source == b]
                if len(dead) == 0 or len(rows) == 0:
                    continue
                pick = torch.randint(len(rows), (len(dead),), generator=generator)
                table.data[b * k + dead] = rows[pick]
                u[dead] = u.mean()
                moved[level] = torch.cat([moved.get(level, dead[:0]), b * k + dead])
        return moved

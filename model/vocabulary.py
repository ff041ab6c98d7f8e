"""The flat token vocabulary: every (level, source, code) has one integer id and one readable string.

Layout (offsets are written into the manifest, so a reader never recomputes them):
    [specials] [shared level 1 .. Lc, K ids each] [source 1: specific level 1 .. Lu] ... [source S: ...]
Strings: `<s1_17>` is code 17 of shared level 1; `<purchases2_903>` is code 903 of purchases' 2nd
specific level.
"""

from __future__ import annotations

import re

import numpy as np
from pydantic import BaseModel, ConfigDict

SPECIALS = ("<pad>",)
_TOKEN = re.compile(r"^<([a-z][a-z0-9_]*?)(\d+)_(\d+)>$")


class VocabularyLayout(BaseModel):
    model_config = ConfigDict(extra="forbid")
    specials: list[str]
    codebook_size: int
    shared_offsets: list[int]
    specific_offsets: dict[str, list[int]]
    size: int


class TokenVocabulary:
    def __init__(self, sources: list[str], shared_levels: int, specific_levels: int, codebook_size: int):
        self.sources = list(sources)
        self.shared_levels = shared_levels
        self.specific_levels = specific_levels
        self.codebook_size = k = codebook_size
        base = len(SPECIALS)
        self.shared_offsets = [base + lvl * k for lvl in range(shared_levels)]
        base += shared_levels * k
        self.specific_offsets = {
            s: [base + (i * specific_levels + j) * k for j in range(specific_levels)]
            for i, s in enumerate(self.sources)
        }
        self.size = base + len(self.sources) * specific_levels * k
        # offsets[source_index, level] for vectorized id assignment
        self._offsets = np.array(
            [self.shared_offsets + self.specific_offsets[s] for s in self.sources], dtype=np.int64
        ).reshape(len(self.sources), shared_levels + specific_levels)

    @property
    def levels(self) -> int:
        return self.shared_levels + self.specific_levels

    def ids(self, source_index: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """codes [N, L] (per-level code indices) -> flat token ids [N, L]."""
        return self._offsets[np.asarray(source_index)] + np.asarray(codes, dtype=np.int64)

    def string(self, token_id: int) -> str:
        if token_id < len(SPECIALS):
            return SPECIALS[token_id]
        k = self.codebook_size
        for lvl, off in enumerate(self.shared_offsets):
            if off <= token_id < off + k:
                return f"<s{lvl + 1}_{token_id - off}>"
        for source, offs in self.specific_offsets.items():
            for j, off in enumerate(offs):
                if off <= token_id < off + k:
                    return f"<{source}{j + 1}_{token_id - off}>"
        raise ValueError(f"token id {token_id} is outside the vocabulary of {self.size}")

    def strings(self, token_ids) -> list[str]:
        return [self.string(int(t)) for t in token_ids]

    def token_id(self, text: str) -> int:
        if text in SPECIALS:
            return SPECIALS.index(text)
        m = _TOKEN.match(text)
        if not m:
            raise ValueError(f"{text!r} is not a u2qt token")
        name, level, code = m.group(1), int(m.group(2)) - 1, int(m.group(3))
        offs = self.shared_offsets if name == "s" else self.specific_offsets.get(name)
        if offs is None or not 0 <= level < len(offs) or not 0 <= code < self.codebook_size:
            raise ValueError(f"{text!r} is not in this vocabulary")
        return offs[level] + code

    def layout(self) -> VocabularyLayout:
        return VocabularyLayout(
            specials=list(SPECIALS),
            codebook_size=self.codebook_size,
            shared_offsets=self.shared_offsets,
            specific_offsets=self.specific_offsets,
            size=self.size,
        )

"""The collision fallback (paper eq. 9): users whose full token sequences are identical get a distinguishing
special token, ordered by engagement.

Deterministic: the order is (engagement descending, user id ascending), a function of the data alone, so the
same data gives the same fallback ids in every process, on every re-run and after every restart (no hash
randomization, no arrival order). Index 0 means "no collision" and adds no token.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Hashable, Sequence

from u2qt.model.entries import COUNT_BYTES


def history_digest(histories: Sequence[Sequence[bytes]]) -> str:
    """What makes two users' histories "identical" for the fallback: the first 16 hex digits of the SHA1 of
    every source's packed entries (model/entries.py) without their event counts — window index and codes, the
    tokens a ranker reads — oldest first, the sources in the manifest's order joined by "|". The store's COMMIT
    script computes this very digest inside Redis (service/store.py; tests/test_store.py holds the two equal),
    and `u2qt eval` computes it here."""
    tokens = b"|".join(b"".join(e[:-COUNT_BYTES] for e in entries) for entries in histories)
    return hashlib.sha1(tokens).hexdigest()[:16]


def assign_fallback(sequences: dict[str, Hashable], engagement: dict[str, float]) -> dict[str, int]:
    """-> {user: fallback index} for users that share their sequence with another user (1, 2, ... in order
    of engagement); users with a unique sequence are left out (index 0)."""
    groups: dict[Hashable, list[str]] = defaultdict(list)
    for user, seq in sequences.items():
        groups[seq].append(user)
    out = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        ranked = sorted(members, key=lambda u: (-float(engagement.get(u, 0.0)), u))
        out.update({u: i + 1 for i, u in enumerate(ranked)})
    return dict(sorted(out.items()))


def fallback_token(index: int) -> str:
    """The special token appended to a colliding user's sequence (index >= 1)."""
    return f"<fb_{index}>"


def collision_rate(sequences: dict[str, Hashable]) -> float:
    """Fraction of users whose full sequence is also some other user's."""
    counts: dict[Hashable, int] = defaultdict(int)
    for seq in sequences.values():
        counts[seq] += 1
    return sum(n for n in counts.values() if n > 1) / len(sequences) if sequences else 0.0

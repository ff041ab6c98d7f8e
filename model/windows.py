"""How one (user, source, window)'s events become the encoder's input.

This is the single implementation of window rendering: training calls it to build its corpus and the
service calls it on live events, so the two can never render a window differently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from u2qt.model.entries import MAX_WINDOW_EVENTS
from u2qt.model.sources import SourceSpec, TextTemplate


def kept_events(event_ids: Sequence, max_events: int = MAX_WINDOW_EVENTS) -> np.ndarray:
    """Positions of the events a window is built from, given all of its events sorted by (ts, event_id), the order
    the service's store returns them in: each event id once (its earliest), then the first `max_events` (the
    service refuses the rest; an entry counts at most MAX_WINDOW_EVENTS). `u2qt batch` and training both take a
    window's events through this, so neither builds a window the online path would not."""
    n = len(event_ids)
    if n > 1 and len(set(event_ids)) < n:
        _, first = np.unique(np.asarray(event_ids, dtype=object), return_index=True)
        return np.sort(first)[:max_events]
    return np.arange(min(n, max_events))


def render_text_window(
    texts: Sequence[str],
    ts: Sequence[float],
    amounts: Sequence[float] | None,
    template: TextTemplate,
) -> str:
    """Aggregate a window's events by text, as 'milk x3', strongest first.

    `amounts` may hold NaN for events without an amount. Identical texts are merged (the paper's
    'CATEGORY, N times'), which keeps a busy week inside the encoder's token budget; the encoder then
    truncates from the end, so what gets cut is the weakest (or oldest, with order_by=recency).
    """
    # text -> [count, amounts, last ts]; amounts are summed with math.fsum, exactly, so a window renders the same
    # whatever order its events come in (summed as they come, 0.1 + 0.2 + 0.3 != 0.3 + 0.2 + 0.1 could swap two
    # categories of equal spend)
    agg: dict[str, list] = {}
    for i, raw in enumerate(texts):
        text = " ".join(str(raw).split()).lower()
        if not text:
            continue
        amount = float(amounts[i]) if amounts is not None else math.nan
        a = agg.setdefault(text, [0, [], -math.inf])
        a[0] += 1
        if not math.isnan(amount):
            a[1].append(amount)
        a[2] = max(a[2], float(ts[i]))
    has_amount = any(a[1] for a in agg.values())
    total = math.fsum(x for a in agg.values() for x in a[1])
    for a in agg.values():
        a[1] = math.fsum(a[1])
    if template.order_by == "weight":
        key = (
            (lambda kv: (-kv[1][1], -kv[1][0], -kv[1][2], kv[0]))
            if has_amount
            else (lambda kv: (-kv[1][0], -kv[1][2], kv[0]))
        )
    else:
        key = lambda kv: (-kv[1][2], -kv[1][0], kv[0])  # noqa: E731
    items = sorted(agg.items(), key=key)[: template.max_items]
    body = ", ".join(t if c == 1 else f"{t} x{int(c)}" for t, (c, _, _) in items)
    if not template.show_totals:
        return body
    n = int(sum(c for c, _, _ in agg.values()))
    head = f"{n} events" + (f", ${total:.2f}" if has_amount else "")
    return f"{head}: {body}"


def _slog(x: float) -> float:
    return math.copysign(math.log1p(abs(x)), x)


def tabular_feature_names(spec: SourceSpec) -> list[str]:
    names = ["log_events"]
    for a in spec.attributes:
        names += [f"{a}_sum", f"{a}_mean", f"{a}_max"]
    return names


def tabular_window_features(values: np.ndarray) -> np.ndarray:
    """Aggregate a window's attribute rows ([events, attributes], NaN = missing) into one raw vector.

    Sums, means and maxima pass through a signed log1p because spend-like attributes are heavy-tailed;
    standardization to training statistics happens inside the exported tabular encoder.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] == 0:
        raise ValueError("a tabular window needs at least one event row")
    out = [math.log1p(values.shape[0])]
    # per column in plain floats: a window holds a few rows, where numpy's cost per call dwarfs the arithmetic
    # (the service renders every window it tokenizes on its event loop)
    for col in values.T.tolist():
        col = [x for x in col if x == x]  # NaN != NaN: missing
        if not col:
            out += [0.0, 0.0, 0.0]
        else:
            total = math.fsum(col)  # exact: the same features whatever order the rows come in
            out += [_slog(total), _slog(total / len(col)), _slog(max(col))]
    return np.asarray(out, dtype=np.float32)

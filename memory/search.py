"""How the store finds the k nearest records of one type that meet a filter, and the filters Chroma takes.

Chroma filters a query by first collecting every record that meets the filter, so a broad filter
is slow on a large store; ``nearest`` filters a cheaper unfiltered fetch of neighbours first and
leaves the filtering to Chroma only when that fetch would have to be too large.
"""

from __future__ import annotations

import math

# Unfiltered neighbours fetched per wanted result before a filter is applied, and the most
# fetched before Chroma's own (costlier for broad filters) filtering is used instead.
OVERFETCH = 10
MAX_OVERFETCH = 400


def all_of(conditions: list[dict]) -> dict | None:
    """Chroma wants a bare condition for one, ``$and`` for two or more, and nothing for none."""
    if not conditions:
        return None
    return conditions[0] if len(conditions) == 1 else {"$and": conditions}


def _meets(metadata: dict, condition: dict) -> bool:
    """Whether metadata meets one condition of the kinds ``recall`` builds: {key: value}, or {key: {"$ne": value}}
    (Chroma's own spelling, so the same condition also goes to Chroma's filter)."""
    if not isinstance(metadata, dict):  # a record stored without metadata (by hand, on a shared server) meets nothing
        return False
    [(key, value)] = condition.items()
    if isinstance(value, dict):
        [(operator, operand)] = value.items()
        if operator != "$ne":
            raise ValueError(f"unsupported memory condition {condition}")
        return metadata.get(key) != operand
    return metadata.get(key) == value


def nearest(collection, vector, conditions: list[dict], k: int) -> list[tuple[dict, float]]:
    """The metadata and cosine distance of the k nearest records of a collection that meet the conditions.

    Measured here (benchmarks/memory_speed.py): Chroma filters a query by first
    collecting every record that meets the filter, about 10 ms plus 25 µs per such
    record (330 ms when all of 100,000 meet it), while an unfiltered query costs about
    40 µs per neighbour returned. So the filter is first tried on the 50 nearest; from
    how many of those meet it, the share of the store that does is estimated, and the
    cheaper of a larger unfiltered fetch and Chroma's own filtering is used.
    """
    include = ["metadatas", "distances"]

    def fetch(n: int, where: dict | None = None) -> tuple[list[tuple[dict, float]], bool]:
        found = collection.query(query_embeddings=[vector], n_results=n, where=where, include=include)
        rows = list(zip(found["metadatas"][0], found["distances"][0]))
        return rows, len(rows) < n  # (rows, whether the collection ran out)

    if not conditions:
        rows, _ = fetch(k)
    else:
        first = max(OVERFETCH * k, 50)
        rows, exhausted = fetch(first)
        rows = [r for r in rows if all(_meets(r[0], c) for c in conditions)]
        if len(rows) < k and not exhausted:
            share = max(len(rows), 0.5) / first
            wider = math.ceil(2 * k / share)
            if wider <= MAX_OVERFETCH:
                rows, exhausted = fetch(wider)
                rows = [r for r in rows if all(_meets(r[0], c) for c in conditions)]
            if len(rows) < k and not exhausted:
                rows, _ = fetch(k, all_of(conditions))
    return rows[:k]

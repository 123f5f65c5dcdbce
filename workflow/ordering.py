"""Borderline-first ordering: a score per item from its judge verdicts.

Pure scoring functions plus :func:`refresh_priorities`, which import and judge call after
writing verdicts. Higher score = review sooner.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlmodel import Session


def borderline_score(verdicts: Iterable[Mapping[str, Any]], spec: Mapping[str, Any] | None = None) -> float:
    """Score in [0, ~5] from an item's verdicts (dicts with dimension, label, probability, probs, status, judge_id).

    Components (summed): probability near the decision boundary (``1 - |2p - 1|`` of the
    unsafe probability), contextual vs intrinsic disagreeing, several judges disagreeing on
    a dimension, VLSU compositional pattern (image and text safe but joint not), any
    borderline label, unparseable/error verdicts.
    """
    raise NotImplementedError


def refresh_priorities(session: Session, collection_id: int) -> int:
    """Recompute ``Item.priority`` for every item of a collection; return how many changed.

    Streams verdicts in item-id order in chunks and writes only changed priorities with
    executemany, so a million items fit in memory and time.
    """
    raise NotImplementedError

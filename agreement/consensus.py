"""Consensus labels: majority vote, Dawid–Skene, adjudication queue and lead adjudications.

Only people vote: consensus reads ``Annotation`` rows and never ``Verdict`` rows, so the
judge that the audit measures cannot pull the reference labels toward itself.

Majority vote marks ties and items whose top label has less than ``threshold`` of the
votes; those go to the adjudication queue. A lead's ``Adjudication`` (the newest per item
and dimension) overrides any vote and is marked ``adjudicated``.

Dawid & Skene (1979) EM: each annotator j has a confusion matrix ``pi_j[k, l]`` =
P(annotator says l | true class k); class priors ``p_k``. E-step: posterior of each item's
true class given its ratings; M-step: re-estimate priors and confusion matrices from the
posteriors. Initialised with each item's vote shares, as in the paper; an annotator's
repeated ratings of an item each count (the paper's observer 1 rated every patient 3 times).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from safereview.agreement import data
from safereview.agreement import verdicts as verdict_reads
from safereview.agreement.alpha import value_counts
from safereview.workflow.policies import require

DEFAULT_THRESHOLD = 0.6
MAX_RATIONALE = 5000


# ---------------------------------------------------------------------------------------
# majority vote
# ---------------------------------------------------------------------------------------


@dataclass
class Vote:
    """Per unit: winning code (-1 on a tie or no votes), share of votes for it, method, queue flag."""

    code: np.ndarray
    agreement: np.ndarray
    n: np.ndarray
    method: np.ndarray  # unanimous | majority | single | tie | none
    needs_adjudication: np.ndarray
    reason: np.ndarray  # "" | tie | low agreement


def majority(counts: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> Vote:
    """Majority vote over a (units, labels) count matrix; ties and low agreement are flagged."""
    counts = np.asarray(counts)
    m = counts.sum(axis=1)
    top = counts.max(axis=1) if counts.size else np.zeros(len(counts), dtype=np.int64)
    n_top = (counts == top[:, None]).sum(axis=1)
    has = m > 0
    tie = has & (n_top > 1)
    code = np.where(has & ~tie, counts.argmax(axis=1) if counts.size else 0, -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        agreement = np.where(has, top / np.maximum(m, 1), np.nan)
    method = np.full(len(m), "majority", dtype=object)
    method[has & (top == m)] = "unanimous"
    method[m == 1] = "single"
    method[tie] = "tie"
    method[~has] = "none"
    low = has & ~tie & (agreement < threshold)
    reason = np.full(len(m), "", dtype=object)
    reason[low] = "low agreement"
    reason[tie] = "tie"
    return Vote(code, agreement, m, method, tie | low, reason)


# ---------------------------------------------------------------------------------------
# Dawid–Skene
# ---------------------------------------------------------------------------------------


@dataclass
class DawidSkene:
    posteriors: np.ndarray  # (units, labels)
    priors: np.ndarray  # (labels,)
    confusion: np.ndarray  # (raters, true label, given label)
    log_likelihood: list[float] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False


def dawid_skene(
    unit: np.ndarray,
    rater: np.ndarray,
    code: np.ndarray,
    n_units: int,
    n_raters: int,
    n_labels: int,
    *,
    max_iter: int = 200,
    tol: float = 1e-8,
    smoothing: float = 0.0,
    weights: np.ndarray | None = None,
    init: np.ndarray | None = None,
) -> DawidSkene:
    """Maximum-likelihood Dawid–Skene by EM over (unit, rater, code) triples (repeats allowed).

    ``smoothing`` adds a pseudo-count to every confusion cell (0 = the paper's plain MLE).
    ``weights`` (one per unit, default 1) weight each unit in the M-step: with 1/π of a
    probability sample it is the pseudo-likelihood fit of the whole collection; a unit of
    weight 0 gets a posterior without shaping the fit. ``init`` starts from these posteriors
    instead of the vote shares. Stops when the log-likelihood gains less than ``tol`` (relative).
    """
    unit = np.asarray(unit, dtype=np.int64)
    rater = np.asarray(rater, dtype=np.int64)
    code = np.asarray(code, dtype=np.int64)
    wu = np.ones(n_units) if weights is None else np.asarray(weights, dtype=np.float64)
    if wu.shape != (n_units,) or not np.all(np.isfinite(wu)) or wu.min(initial=0.0) < 0 or not wu.sum() > 0:
        raise ValueError("weights: one finite, non-negative weight per unit, not all zero")
    counts = value_counts(unit, code, n_units, n_labels).astype(np.float64)
    m = counts.sum(axis=1, keepdims=True)
    post = np.where(m > 0, counts / np.maximum(m, 1), 1.0 / n_labels) if init is None else np.array(init, dtype=float)
    rc = rater * n_labels + code
    history: list[float] = []
    conf = np.zeros((n_raters, n_labels, n_labels))
    priors = np.full(n_labels, 1.0 / n_labels)
    converged = False
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007
        # M-step: priors and confusion matrices from the current posteriors
        priors = np.average(post, axis=0, weights=wu)
        for k in range(n_labels):
            conf[:, k, :] = np.bincount(
                rc, weights=np.where(wu[unit] > 0, post[unit, k] * wu[unit], 0.0), minlength=n_raters * n_labels
            ).reshape(n_raters, n_labels)
        conf += smoothing
        rows = conf.sum(axis=2, keepdims=True)
        conf = np.where(rows > 0, conf / np.where(rows > 0, rows, 1), 1.0 / n_labels)
        # E-step: log P(true = k, ratings) per unit
        with np.errstate(divide="ignore"):
            log_conf = np.log(conf)
            log_joint = np.log(priors)[None, :].repeat(n_units, axis=0)
        for k in range(n_labels):
            log_joint[:, k] += np.bincount(unit, weights=log_conf[rater, k, code], minlength=n_units)
        top = log_joint.max(axis=1)
        shift = np.where(np.isfinite(top), top, 0.0)  # log-sum-exp, stable (scipy's costs 10x more here)
        with np.errstate(divide="ignore"):
            norm = shift + np.log(np.exp(log_joint - shift[:, None]).sum(axis=1))
        # a unit outside the fit (weight 0) may carry a rating the fit calls impossible: its
        # vote shares then stand in, and it never touches the fit or the likelihood
        bad = ~np.isfinite(norm)
        post = np.exp(log_joint - np.where(bad, 0.0, norm)[:, None])
        if bad.any():
            post[bad] = np.where(m[bad] > 0, counts[bad] / np.maximum(m[bad], 1), 1.0 / n_labels)
        history.append(float(np.dot(wu[~bad], norm[~bad])))
        if len(history) > 1 and abs(history[-1] - history[-2]) <= tol * max(1.0, abs(history[-1])):
            converged = True
            break
    return DawidSkene(post, priors, conf, history, it, converged)


# ---------------------------------------------------------------------------------------
# consensus over the database
# ---------------------------------------------------------------------------------------


@dataclass
class Consensus:
    """Consensus of one dimension: per item (sorted ids) the label code, how it was reached,
    vote counts, agreement share, Dawid–Skene posterior and the adjudication queue flag."""

    dimension: str
    labels: list[str]
    item_ids: np.ndarray
    code: np.ndarray
    method: np.ndarray
    n_annotators: np.ndarray
    agreement: np.ndarray
    posterior: np.ndarray
    needs_adjudication: np.ndarray
    reason: np.ndarray
    counts: np.ndarray
    adjudicated: np.ndarray
    ds: DawidSkene | None = None
    rater_names: list[str] = field(default_factory=list)

    def label(self, i: int) -> str | None:
        c = int(self.code[i])
        return self.labels[c] if c >= 0 else None

    def codes_for(self, item_ids: np.ndarray) -> np.ndarray:
        """Consensus codes aligned to ``item_ids`` (-1 where there is none)."""
        if len(self.item_ids) == 0:
            return np.full(len(item_ids), -1, dtype=np.int64)
        pos = np.clip(np.searchsorted(self.item_ids, item_ids), 0, len(self.item_ids) - 1)
        return np.where(self.item_ids[pos] == item_ids, self.code[pos], -1)


def consensus_from_ratings(
    r: data.Ratings,
    *,
    method: str = "majority",
    threshold: float = DEFAULT_THRESHOLD,
    adjudications: dict[int, dict[str, Any]] | None = None,
    unit_weights: np.ndarray | None = None,
    init: np.ndarray | None = None,
    tol: float = 1e-8,
) -> Consensus:
    """Consensus of in-memory ratings; ``method`` "majority" or "dawid-skene" (``unit_weights``,
    ``init`` and ``tol``: see :func:`dawid_skene`)."""
    if method not in ("majority", "dawid-skene"):
        raise data.AgreementError("method must be majority or dawid-skene")
    counts = r.counts()
    vote = majority(counts, threshold)
    code = vote.code.copy()
    meth = vote.method.copy()
    posterior = np.full(r.n_units, np.nan)
    ds = None
    if method == "dawid-skene" and r.n_units:
        ds = dawid_skene(
            r.unit, r.rater, r.code, r.n_units, len(r.rater_names), r.n_labels, weights=unit_weights, init=init, tol=tol
        )
        code = ds.posteriors.argmax(axis=1)
        posterior = ds.posteriors.max(axis=1)
        has = vote.n > 0
        code = np.where(has, code, -1)
        meth = np.where(meth == "unanimous", "unanimous", np.where(has, "dawid-skene", "none")).astype(object)
    with np.errstate(divide="ignore", invalid="ignore"):
        agreement = np.where(
            code >= 0, counts[np.arange(r.n_units), np.maximum(code, 0)] / np.maximum(vote.n, 1), vote.agreement
        )
    needs = vote.needs_adjudication.copy()
    reason = vote.reason.copy()
    adjudicated = np.zeros(r.n_units, dtype=bool)
    labels_index = {lab: i for i, lab in enumerate(r.labels)}
    for item_id, adj in (adjudications or {}).items():
        pos = int(np.searchsorted(r.item_ids, item_id))
        if pos >= r.n_units or r.item_ids[pos] != item_id or adj["label"] not in labels_index:
            continue
        code[pos] = labels_index[adj["label"]]
        meth[pos] = "adjudicated"
        adjudicated[pos] = True
        needs[pos] = False
        reason[pos] = ""
        agreement[pos] = counts[pos, code[pos]] / max(int(vote.n[pos]), 1)
    return Consensus(
        r.dimension,
        r.labels,
        r.item_ids,
        code,
        meth,
        vote.n,
        agreement,
        posterior,
        needs,
        reason,
        counts,
        adjudicated,
        ds,
        list(r.rater_names),
    )


def consensus(
    bind: Any,
    dimension: str,
    collections: Sequence[str] | None = None,
    *,
    method: str = "majority",
    threshold: float = DEFAULT_THRESHOLD,
    field_name: str = "labels",
) -> Consensus:
    """Consensus of a dimension over the collections' human annotations, adjudications applied."""
    sc = data.scope(bind, collections)
    spec = sc.dimension(dimension)
    r = data.load_ratings(
        bind, sc.collection_ids, dimension, spec["labels"], ordered=bool(spec.get("ordered")), field_name=field_name
    )
    adj = verdict_reads.load_adjudications(bind, sc.collection_ids, dimension)
    return consensus_from_ratings(r, method=method, threshold=threshold, adjudications=adj)


# ---------------------------------------------------------------------------------------
# services for leads
# ---------------------------------------------------------------------------------------


def adjudication_queue(
    session: Any,
    user: Any,
    collections: Sequence[str] | None = None,
    dimensions: Sequence[str] | None = None,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Items a lead should decide: ties first, then lowest agreement; adjudicated ones drop out.

    Each row carries what the two consensus methods would propose (``proposal_majority``,
    ``proposal_dawid_skene``; None for a tie), for the lead to weigh, never to apply silently.
    """
    require(user, "adjudicate")
    sc = data.scope(session, collections)
    dims = list(dimensions) if dimensions else sc.dimensions()
    rows: list[dict[str, Any]] = []
    names = [sc.collection_names[c] for c in sc.collection_ids]
    for dim in dims:
        cons = consensus(session, dim, names, threshold=threshold)
        flagged = np.flatnonzero(cons.needs_adjudication)
        ds = consensus(session, dim, names, method="dawid-skene", threshold=threshold) if flagged.size else None
        for i in flagged:
            rows.append(
                {
                    "item_id": int(cons.item_ids[i]),
                    "dimension": dim,
                    "reason": str(cons.reason[i]),
                    "n_annotators": int(cons.n_annotators[i]),
                    "agreement": None if np.isnan(cons.agreement[i]) else float(cons.agreement[i]),
                    "votes": {lab: int(n) for lab, n in zip(cons.labels, cons.counts[i], strict=True) if n},
                    "proposal_majority": cons.label(int(i)),
                    "proposal_dawid_skene": ds.label(int(i)) if ds is not None else None,
                }
            )
    rows.sort(
        key=lambda r: (
            r["reason"] != "tie",
            r["agreement"] if r["agreement"] is not None else 0.0,
            r["item_id"],
            r["dimension"],
        )
    )
    if rows:
        ext = external_ids(session, [r["item_id"] for r in rows])
        for r in rows:
            r["external_id"], r["collection"] = ext.get(r["item_id"], ("", ""))
    return rows[:limit] if limit else rows


def external_ids(session: Any, item_ids: list[int]) -> dict[int, tuple[str, str]]:
    """Item id -> (external id, collection name): how people know the items."""
    out: dict[int, tuple[str, str]] = {}
    with data.connection(session) as conn:
        uniq = sorted(set(item_ids))
        for start in range(0, len(uniq), 500):
            chunk = uniq[start : start + 500]
            marks, params = data._in_list("i", chunk)
            for iid, ext, name in data.fetch(
                conn,
                "SELECT i.id, i.external_id, c.name FROM item i JOIN collection c "
                f"ON c.id = i.collection_id WHERE i.id IN ({marks})",
                params,
            ):
                out[int(iid)] = (ext, name)
    return out


def adjudicate(session: Any, user: Any, item_id: int, dimension: str, label: str, rationale: str) -> Any:
    """Record a lead's decision (a new ``Adjudication`` row; the newest one wins).

    A gold label overrides what the annotators said, so it needs a note saying why.
    """
    from safereview.db.collections import taxonomy_of
    from safereview.db.models import Adjudication, Collection, Item, utcnow
    from safereview.workflow.errors import InvalidInput, NotFound

    require(user, "adjudicate")
    item = session.get(Item, item_id)
    if item is None:
        raise NotFound(f"no item {item_id}")
    spec = taxonomy_of(session, session.get(Collection, item.collection_id))
    dims = {d["name"]: d for d in spec["dimensions"]}
    if dimension not in dims:
        raise InvalidInput(f"dimension: {dimension!r} is not one of {', '.join(dims)}")
    if label not in dims[dimension]["labels"]:
        raise InvalidInput(f"label: {label!r} is not one of {', '.join(dims[dimension]['labels'])}")
    if not isinstance(rationale, str) or len(rationale) > MAX_RATIONALE:
        raise InvalidInput(f"rationale: at most {MAX_RATIONALE} characters")
    if not rationale.strip():
        raise InvalidInput("rationale: a decision needs a note saying why (it is kept with the gold label)")
    row = Adjudication(
        item_id=item_id, dimension=dimension, label=label, rationale=rationale, user_id=user.id, at=utcnow()
    )
    session.add(row)
    session.flush()
    return row


def adjudication_context(session: Any, user: Any, item_id: int, dimension: str) -> dict[str, Any]:
    """What a lead sees before deciding: the item, each annotator's label, blind label and
    rationale on ``dimension``, and the judge's verdicts (rows of ``Verdict``)."""
    from sqlmodel import select

    from safereview.db.models import Annotation, Item, User, Verdict
    from safereview.workflow.errors import NotFound

    require(user, "adjudicate")
    item = session.get(Item, item_id)
    if item is None:
        raise NotFound(f"no item {item_id}")
    rows = session.exec(
        select(Annotation, User)
        .where(Annotation.item_id == item_id, Annotation.user_id == User.id)
        .order_by(User.username)
    ).all()
    people = [
        {
            "annotator": u.username,
            "label": (a.labels or {}).get(dimension),
            "blind label": (a.blind_labels or {}).get(dimension),
            "rationale": a.rationale,
        }
        for a, u in rows
    ]
    verdicts = list(session.exec(select(Verdict).where(Verdict.item_id == item_id)).all())
    return {"item": item, "people": people, "verdicts": verdicts}


def soft_reference(cons: Consensus, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The people's label distribution on each of ``item_ids``: (matrix items × labels, has-labels mask).

    An item's reviews are averaged (k = 2 with a split vote gives 1/2 and 1/2: a tie is
    kept, never dropped); with ``method="dawid-skene"`` the Dawid–Skene posterior replaces
    the average; an adjudicated label replaces both. Every estimate weighted by this matrix
    is linear in the reviews, so a design-unbiased estimator stays unbiased for "agreement
    with the people" however many reviews an item has so far.
    """
    ids = np.asarray(item_ids, dtype=np.int64)
    n_labels = len(cons.labels)
    out = np.zeros((len(ids), n_labels))
    if len(cons.item_ids) == 0 or len(ids) == 0:
        return out, np.zeros(len(ids), dtype=bool)
    pos = np.clip(np.searchsorted(cons.item_ids, ids), 0, len(cons.item_ids) - 1)
    found = cons.item_ids[pos] == ids
    counts = cons.counts[pos].astype(np.float64)
    n = counts.sum(axis=1)
    has = found & (n > 0)
    out[has] = counts[has] / n[has, None]
    if cons.ds is not None:
        out[has] = cons.ds.posteriors[pos[has]]
    adj = found & cons.adjudicated[pos]
    if adj.any():
        out[adj] = 0.0
        out[adj, cons.code[pos[adj]]] = 1.0
        has = has | adj
    return out, has

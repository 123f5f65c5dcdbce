"""Where the people's labels behind a judge audit came from: blind, after the reveal, or with
the verdict on screen.

The audit measures the judge against the people. That comparison is only independent of the
judge when the people did not see its verdict first: in an open collection the verdict is on
screen while they label, and in a blind one they may change a label after the reveal. Both
pull the reference toward the judge, so agreement reads high and under-blocking low. These
counts let a report say which labels it used, and warn when the judge could have shaped them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from safereview.agreement.data import AgreementError, _json_key, connection, fetch, item_filter, label_expr

LABEL_SOURCES = {
    "final": ("labels", "the people's final labels (after the reveal in blind review)"),
    "blind": ("blind_labels", "the labels people committed before the judge's verdict was revealed"),
}


def label_field(labels: str) -> tuple[str, str]:
    """The annotation column for ``labels`` ("final" or "blind") and a sentence naming it."""
    try:
        return LABEL_SOURCES[labels]
    except KeyError:
        raise AgreementError(f"labels must be final or blind, got {labels!r}") from None


def label_provenance(bind: Any, collection_ids: Sequence[int], dimension: str, judge_id: str | None) -> dict[str, int]:
    """Counts over the annotations with a final label on ``dimension`` in the collections.

    ``labels``: all of them; ``blind``: committed before the reveal; ``changed_after_reveal``:
    blind, then changed; ``changed_to_judge``: of those, now the judge's label;
    ``verdict_on_screen``: made in the app with the verdict shown (open review; the
    annotation records the confirm/override); ``imported``: from files, conditions unknown.
    """
    with connection(bind) as conn:
        cond, params = item_filter(conn, collection_ids, "a.item_id")
        final = label_expr(conn, "a.labels", "dimkey")
        blind = label_expr(conn, "a.blind_labels", "dimkey")
        row = fetch(
            conn,
            "SELECT COUNT(*), "
            f"COALESCE(SUM(CASE WHEN {blind} IS NOT NULL THEN 1 ELSE 0 END), 0), "
            f"COALESCE(SUM(CASE WHEN {blind} IS NOT NULL AND {blind} <> {final} THEN 1 ELSE 0 END), 0), "
            f"COALESCE(SUM(CASE WHEN {blind} IS NOT NULL AND {blind} <> {final} AND {final} = (SELECT v.label "
            "FROM verdict v WHERE v.item_id = a.item_id AND v.dimension = :dim AND v.judge_id = :judge) "
            "THEN 1 ELSE 0 END), 0), "
            f"COALESCE(SUM(CASE WHEN {blind} IS NULL AND a.source <> 'import' AND a.verdict_action IS NOT NULL "
            "THEN 1 ELSE 0 END), 0), "
            "COALESCE(SUM(CASE WHEN a.source = 'import' THEN 1 ELSE 0 END), 0) "
            f"FROM annotation a WHERE {cond} AND {final} IS NOT NULL",
            {**params, "dimkey": _json_key(conn, dimension), "dim": dimension, "judge": judge_id or ""},
        )[0]
    keys = ("labels", "blind", "changed_after_reveal", "changed_to_judge", "verdict_on_screen", "imported")
    return dict(zip(keys, (int(x) for x in row), strict=True))


def provenance_warnings(counts: dict[str, int], labels: str, dimension: str) -> list[str]:
    """What a lead must know about the reference labels before quoting the audit."""
    n, out = counts["labels"], []
    if labels == "final" and counts["verdict_on_screen"]:
        out.append(
            f"{counts['verdict_on_screen']} of the {n} labels on {dimension} were given with the judge's verdict on "
            "screen (open review): people lean toward what they are shown, so agreement with the judge may read "
            "high and under-blocking low. Blind review (safereview collections set NAME --blind) gives labels the "
            "judge did not shape."
        )
    if labels == "final" and counts["changed_after_reveal"]:
        out.append(
            f"{counts['changed_after_reveal']} of the {counts['blind']} blind labels on {dimension} were changed "
            f"after the judge's verdict was revealed ({counts['changed_to_judge']} to the judge's label), and these "
            "figures use the changed labels. Use the labels committed before the reveal (--labels blind; on the "
            "pages, People's labels: blind) to measure the judge on labels it did not shape."
        )
    if labels == "blind" and counts["blind"] < n:
        out.append(
            f"{n - counts['blind']} of the {n} labels on {dimension} have no blind version (open review or "
            "imported) and are left out: sample items with no other label drop out of the estimates, which then "
            "assume those items are like the rest."
        )
    return out

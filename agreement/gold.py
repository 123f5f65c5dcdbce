"""Gold-label snapshots and their export (JSONL, CSV, Parquet, Hugging Face dataset folder).

A snapshot is numbered (``GoldSnapshot.id``) and reproducible: its checksum is a SHA-256
over the sorted rows' content (not the snapshot id or time), so the same annotations,
adjudications, verdicts and parameters give the same checksum. One row per item and
dimension: gold label, how it was reached (``unanimous``, ``majority``, ``single``,
``dawid-skene``, ``adjudicated``; ``tie`` leaves the label empty), number of annotators,
share agreeing with the gold label, Dawid–Skene posterior, and the judge's verdict beside it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agreement import data
from agreement.consensus import DEFAULT_THRESHOLD, consensus_from_ratings, require

FORMATS = ("jsonl", "csv", "parquet", "hf")
COLUMNS = ("snapshot_id", "collection", "item_id", "external_id", "task_type", "category", "model", "modality",
           "dimension", "label", "method", "n_annotators", "agreement", "posterior", "judge_id", "judge_label")


def _table(columns: dict[str, Any]):  # type: ignore[no-untyped-def]
    import pyarrow as pa

    types = {"snapshot_id": pa.int64(), "item_id": pa.int64(), "n_annotators": pa.int32(),
             "agreement": pa.float64(), "posterior": pa.float64()}
    arrays = []
    for name in COLUMNS:
        values = columns[name]
        if name in ("agreement", "posterior"):
            arr = np.asarray(values, dtype=np.float64)
            arrays.append(pa.array(arr, mask=np.isnan(arr), type=pa.float64()))
        elif name in types:
            arrays.append(pa.array(np.asarray(values), type=types[name]))
        else:
            arrays.append(pa.array(list(values) if not isinstance(values, list) else values, type=pa.string()))
    return pa.Table.from_arrays(arrays, names=list(COLUMNS))


def checksum(columns: dict[str, Any]) -> str:
    """SHA-256 over every column except ``snapshot_id`` (floats rounded to 9 decimals)."""
    h = hashlib.sha256()
    for name in COLUMNS:
        if name == "snapshot_id":
            continue
        h.update(name.encode())
        values = columns[name]
        if name in ("agreement", "posterior"):
            arr = np.round(np.asarray(values, dtype=np.float64), 9)
            arr = np.where(np.isnan(arr), -1.0, arr)
            h.update(arr.astype("<f8").tobytes())
        elif name in ("item_id", "n_annotators"):
            h.update(np.asarray(values, dtype="<i8").tobytes())
        else:
            h.update("\x1f".join("\x00" if v is None else str(v) for v in values).encode())
    return h.hexdigest()


def compute_gold(bind: Any, collections: Sequence[str] | None = None, dimensions: Sequence[str] | None = None, *,
                 method: str = "majority", threshold: float = DEFAULT_THRESHOLD,
                 judge_id: str | None = None) -> dict[str, Any]:
    """Gold rows as column arrays (snapshot id 0), sorted by item id then dimension order."""
    sc = data.scope(bind, collections)
    dims = list(dimensions) if dimensions else sc.dimensions()
    items = data.load_items(bind, sc.collection_ids)
    parts: list[dict[str, Any]] = []
    for d_index, dim in enumerate(dims):
        spec = sc.dimension(dim)
        labels = list(spec["labels"])
        r = data.load_ratings(bind, sc.collection_ids, dim, labels, ordered=bool(spec.get("ordered")))
        adj = data.load_adjudications(bind, sc.collection_ids, dim)
        cons = consensus_from_ratings(r, method=method, threshold=threshold, adjudications=adj)
        jid = judge_id or data.default_judge(bind, sc.collection_ids, dim)
        jcodes = (data.load_verdicts(bind, sc.collection_ids, dim, labels, jid).codes_for(cons.item_ids)
                  if jid else np.full(len(cons.item_ids), -1))
        lab_arr = np.array([*labels, None], dtype=object)
        pos = np.searchsorted(items["id"], cons.item_ids)
        parts.append({
            "order": np.full(len(pos), d_index), "item_id": cons.item_ids, "pos": pos,
            "dimension": np.full(len(pos), dim, dtype=object),
            "label": lab_arr[np.where(cons.code >= 0, cons.code, len(labels))],
            "method": cons.method, "n_annotators": cons.n_annotators.astype(np.int64),
            "agreement": cons.agreement.astype(np.float64), "posterior": cons.posterior.astype(np.float64),
            "judge_id": np.full(len(pos), jid or "", dtype=object),
            "judge_label": lab_arr[np.where(jcodes >= 0, jcodes, len(labels))],
        })
    cat = {k: np.concatenate([p[k] for p in parts]) if parts else np.array([]) for k in
           ("order", "item_id", "pos", "dimension", "label", "method", "n_annotators", "agreement", "posterior",
            "judge_id", "judge_label")}
    order = np.lexsort((cat["order"], cat["item_id"])) if len(cat["item_id"]) else np.array([], dtype=np.int64)
    pos = cat["pos"][order].astype(np.int64)
    out: dict[str, Any] = {
        "snapshot_id": np.zeros(len(order), dtype=np.int64),
        "collection": items["collection"][pos] if len(pos) else np.array([], dtype=object),
        "item_id": cat["item_id"][order].astype(np.int64),
        "external_id": items["external_id"][pos] if len(pos) else np.array([], dtype=object),
    }
    for col in ("task_type", "category", "model", "modality"):
        out[col] = items[col][pos] if len(pos) else np.array([], dtype=object)
    for col in ("dimension", "label", "method", "n_annotators", "agreement", "posterior", "judge_id", "judge_label"):
        out[col] = cat[col][order]
    out["_params"] = {"method": method, "threshold": threshold, "dimensions": dims, "judge_id": judge_id,
                      "collections": [sc.collection_names[c] for c in sc.collection_ids]}
    out["_collection_ids"] = list(sc.collection_ids)
    return out


def _insert_gold(session: Any, snapshot_id: int, cols: dict[str, Any]) -> None:
    """Bulk insert of the Gold rows (DB-API executemany on SQLite, COPY on PostgreSQL)."""
    conn = session.connection()
    agreement = [None if np.isnan(x) else float(x) for x in cols["agreement"].tolist()]
    posterior = [None if np.isnan(x) else float(x) for x in cols["posterior"].tolist()]
    rows = list(zip([snapshot_id] * len(agreement), cols["item_id"].tolist(), cols["dimension"].tolist(),
                    cols["label"].tolist(), cols["method"].tolist(), cols["n_annotators"].tolist(), agreement,
                    posterior, strict=True))
    names = ["snapshot_id", "item_id", "dimension", "label", "method", "n_annotators", "agreement", "posterior"]
    dbapi = conn.connection.dbapi_connection
    if conn.dialect.name == "postgresql":
        with dbapi.cursor() as cur, cur.copy(f"COPY gold ({', '.join(names)}) FROM STDIN") as cp:
            for row in rows:
                cp.write_row(row)
        return
    cur = dbapi.cursor()
    cur.executemany(f"INSERT INTO gold ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})", rows)
    cur.close()


def create_snapshot(session: Any, user: Any, collections: Sequence[str] | None = None,
                    dimensions: Sequence[str] | None = None, *, method: str = "majority",
                    threshold: float = DEFAULT_THRESHOLD, judge_id: str | None = None,
                    created_by: str = "") -> tuple[Any, Any]:
    """Compute gold labels, store a numbered ``GoldSnapshot`` with its rows; return (snapshot, pyarrow table).

    ``user`` is checked for the "export" permission (pass None only from the trusted CLI).
    """
    from db.models import GoldSnapshot, utcnow

    if user is not None:
        require(user, "export")
    cols = compute_gold(session, collections, dimensions, method=method, threshold=threshold, judge_id=judge_id)
    digest = checksum(cols)
    snap = GoldSnapshot(method=method, params=cols["_params"], collection_ids=cols["_collection_ids"],
                        n_rows=len(cols["item_id"]), checksum=digest,
                        created_by=created_by or getattr(user, "username", ""), created_at=utcnow())
    session.add(snap)
    session.flush()
    _insert_gold(session, int(snap.id), cols)
    cols["snapshot_id"] = np.full(len(cols["item_id"]), int(snap.id), dtype=np.int64)
    return snap, _table(cols)


def snapshot_table(bind: Any, snapshot_id: int):  # type: ignore[no-untyped-def]
    """Re-read a stored snapshot as a pyarrow table (same columns as at creation)."""
    with data.connection(bind) as conn:
        snap = data.fetch(conn, "SELECT id, params FROM goldsnapshot WHERE id = :s", {"s": snapshot_id})
        if not snap:
            raise data.AgreementError(f"no gold snapshot {snapshot_id}")
        params = snap[0][1] if isinstance(snap[0][1], dict) else json.loads(snap[0][1])
        rows = data.fetch(conn, "SELECT g.item_id, g.dimension, g.label, g.method, g.n_annotators, g.agreement, "
                                "g.posterior, c.name, i.external_id, i.task_type, i.category, i.model, "
                                "i.input_modalities || '->' || i.output_modalities FROM gold g "
                                "JOIN item i ON i.id = g.item_id JOIN collection c ON c.id = i.collection_id "
                                "WHERE g.snapshot_id = :s ORDER BY g.id", {"s": snapshot_id})
    dims = list(params.get("dimensions") or [])
    judge_labels: dict[tuple[int, str], tuple[str, str | None]] = {}
    sc_ids = None
    for dim in dims:
        jid = params.get("judge_id")
        if sc_ids is None:
            sc_ids = data.scope(bind, params.get("collections")).collection_ids
        jid = jid or data.default_judge(bind, sc_ids, dim)
        if not jid:
            continue
        with data.connection(bind) as conn:
            for iid, lab in data.fetch(conn, "SELECT item_id, label FROM verdict WHERE judge_id = :j AND "
                                             "dimension = :d", {"j": jid, "d": dim}):
                judge_labels[(int(iid), dim)] = (jid, lab)
    cols: dict[str, Any] = {
        "snapshot_id": np.full(len(rows), snapshot_id, dtype=np.int64),
        "item_id": np.array([r[0] for r in rows], dtype=np.int64),
        "dimension": [r[1] for r in rows], "label": [r[2] for r in rows], "method": [r[3] for r in rows],
        "n_annotators": np.array([r[4] for r in rows], dtype=np.int64),
        "agreement": np.array([np.nan if r[5] is None else r[5] for r in rows], dtype=np.float64),
        "posterior": np.array([np.nan if r[6] is None else r[6] for r in rows], dtype=np.float64),
        "collection": [r[7] for r in rows], "external_id": [r[8] for r in rows], "task_type": [r[9] for r in rows],
        "category": [r[10] for r in rows], "model": [r[11] for r in rows], "modality": [r[12] for r in rows],
    }
    cols["judge_id"] = [judge_labels.get((int(r[0]), r[1]), ("", None))[0] for r in rows]
    cols["judge_label"] = [judge_labels.get((int(r[0]), r[1]), ("", None))[1] for r in rows]
    return _table(cols)


# ---------------------------------------------------------------------------------------
# writers
# ---------------------------------------------------------------------------------------


def dataset_card(snapshot: Any, n_rows: int, data_file: str) -> str:
    """README.md with the YAML front matter the Hugging Face hub and ``datasets`` read."""
    params = snapshot.params if isinstance(snapshot.params, dict) else {}
    front = (
        "---\n"
        "configs:\n"
        "- config_name: default\n"
        "  data_files:\n"
        "  - split: gold\n"
        f"    path: {data_file}\n"
        "tags:\n"
        "- safety\n"
        "- human-annotation\n"
        "---\n"
    )
    body = [
        f"# Gold labels, snapshot {snapshot.id}",
        "",
        "Consensus safety labels exported by safereview.",
        "",
        f"- rows: {n_rows} (one per item and dimension)",
        f"- method: {snapshot.method}; adjudication threshold {params.get('threshold')}",
        f"- collections: {', '.join(map(str, params.get('collections', [])))}",
        f"- dimensions: {', '.join(map(str, params.get('dimensions', [])))}",
        f"- checksum (SHA-256 of the rows): `{snapshot.checksum}`",
        "",
        "Columns: " + ", ".join(f"`{c}`" for c in COLUMNS) + ".",
        "`method` says how each label was reached: unanimous, majority, single (one annotator), "
        "dawid-skene, adjudicated (a lead decided), tie (no label).",
        "",
        "Load with `datasets.load_dataset(\"<this folder>\")`, or read the Parquet file directly.",
    ]
    return front + "\n" + "\n".join(body) + "\n"


def write(table: Any, out: str | Path, fmt: str, snapshot: Any = None) -> list[Path]:
    """Write the gold table as jsonl, csv, parquet, or a Hugging Face folder (``hf``)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    out = Path(out)
    if fmt not in FORMATS:
        raise data.AgreementError(f"format must be one of {', '.join(FORMATS)}")
    if fmt == "hf":
        out.mkdir(parents=True, exist_ok=True)
        (out / "data").mkdir(exist_ok=True)
        rel = "data/gold-00000-of-00001.parquet"
        pq.write_table(table, out / rel)
        (out / "README.md").write_text(dataset_card(snapshot, table.num_rows, rel), encoding="utf-8")
        return [out / rel, out / "README.md"]
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        pq.write_table(table, out)
    elif fmt == "csv":
        pacsv.write_csv(table, out)
    else:
        with out.open("w", encoding="utf-8") as fh:
            for batch in table.to_batches(max_chunksize=65536):
                for row in batch.to_pylist():
                    fh.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
    return [out]

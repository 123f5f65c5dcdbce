"""Gold-label snapshots and their export (JSONL, CSV, Parquet, Hugging Face dataset folder).

A snapshot is numbered (``GoldSnapshot.id``) and reproducible: its checksum is a SHA-256
over the sorted rows' content (not the snapshot id or time), so the same annotations,
adjudications, verdicts and parameters give the same checksum. One row per item and
dimension: gold label, how it was reached (``unanimous``, ``majority``, ``single``,
``dawid-skene``, ``adjudicated``; ``tie`` leaves the label empty), number of annotators,
share agreeing with the gold label, Dawid–Skene posterior, and the judge's verdict beside it.

The Hugging Face folder (``hf``) is what ``datasets.load_dataset(folder)`` loads with typed
features: ``label`` and ``judge_label`` are ``ClassLabel`` codes there (every other format
keeps the label text). ``datasets`` is not needed to write it: the features are written by
hand in the shape ``datasets.Features.to_dict()`` gives, and the test loads the folder with
the real package.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from safereview.agreement import data
from safereview.agreement import items as item_reads
from safereview.agreement import verdicts as verdict_reads
from safereview.agreement.consensus import DEFAULT_THRESHOLD, consensus_from_ratings
from safereview.workflow.policies import require

FORMATS = ("jsonl", "csv", "parquet", "hf")
COLUMNS = (
    "snapshot_id",
    "collection",
    "item_id",
    "external_id",
    "task_type",
    "category",
    "model",
    "modality",
    "dimension",
    "label",
    "method",
    "n_annotators",
    "agreement",
    "posterior",
    "judge_id",
    "judge_label",
)
LABEL_COLUMNS = ("label", "judge_label")  # class labels in the hf folder
# The rows are the reviewed items, which the queue chose borderline-first: said wherever the
# table goes, because the obvious computation on it (share of rows where judge_label == label)
# is not the judge's accuracy.
ROWS_ARE_NOT_A_RANDOM_SAMPLE = (
    "The rows are the items people reviewed. The review queue serves borderline items first, so they are "
    "not a random sample of the collection: the share of rows where judge_label equals label is not the "
    "judge's accuracy, and label shares over the rows are not the collection's rates. For those, use the "
    "design-weighted figures (safereview audit, or the rates below in a dataset card)."
)
# arrow type -> ``datasets.Value`` dtype, for the gold table's columns
_HF_DTYPES = {"string": "string", "int64": "int64", "int32": "int32", "double": "float64"}
HF_DATA_FILE = "data/gold-00000-of-00001.parquet"


def _strings(values: Any):  # type: ignore[no-untyped-def]
    import pyarrow as pa

    return pa.array(values.tolist() if isinstance(values, np.ndarray) else list(values), type=pa.string())


def _coded(codes: np.ndarray, names: Sequence[str]):  # type: ignore[no-untyped-def]
    """Plain string array from integer codes into ``names`` (-1 = null), built in C."""
    import pyarrow as pa

    codes = np.asarray(codes, dtype=np.int32)
    d = pa.DictionaryArray.from_arrays(
        pa.array(codes, mask=codes < 0, type=pa.int32()), pa.array(list(names), type=pa.string())
    )
    return d.cast(pa.string())


def _factorize(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(codes, names) of a short-vocabulary object array, one vectorised comparison per name
    (``np.unique`` would sort a million strings)."""
    codes = np.full(len(values), -1, dtype=np.int32)
    names: list[str] = []
    rest = np.arange(len(values))
    while len(rest):
        name = values[rest[0]]
        hit = values[rest] == name
        codes[rest[hit]] = len(names)
        names.append(str(name))
        rest = rest[~hit]
    return codes, names


def _floats(values: np.ndarray):  # type: ignore[no-untyped-def]
    import pyarrow as pa

    arr = np.asarray(values, dtype=np.float64)
    return pa.array(arr, mask=np.isnan(arr), type=pa.float64())


def _table(cols: dict[str, Any]):  # type: ignore[no-untyped-def]
    """pyarrow table in :data:`COLUMNS` order from a dict of arrow arrays / numpy arrays."""
    import pyarrow as pa

    arrays = []
    for name in COLUMNS:
        v = cols[name]
        if isinstance(v, pa.Array | pa.ChunkedArray):
            arrays.append(v)
        elif name in ("agreement", "posterior"):
            arrays.append(_floats(v))
        elif name in ("snapshot_id", "item_id"):
            arrays.append(pa.array(np.asarray(v, dtype=np.int64), type=pa.int64()))
        elif name == "n_annotators":
            arrays.append(pa.array(np.asarray(v, dtype=np.int32), type=pa.int32()))
        else:
            arrays.append(_strings(v))
    return pa.Table.from_arrays(arrays, names=list(COLUMNS))


def _joined(strings: Any, sep: str) -> bytes:
    """``sep.join(strings).encode()`` for a pyarrow string array, joined in C (no Python str per value)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(strings) == 0:
        return b""
    one = pa.ListArray.from_arrays(pa.array([0, len(strings)], type=pa.int32()), strings)
    return pc.binary_join(one, sep)[0].as_buffer().to_pybytes()


def checksum(table: Any) -> str:
    """SHA-256 over every column but ``snapshot_id``: strings as dictionary (first-seen order) plus
    indices, numbers as little-endian bytes with nulls as -1 (floats rounded to 9 decimals)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    h = hashlib.sha256()
    for name in COLUMNS:
        if name == "snapshot_id":
            continue
        col = table.column(name).combine_chunks()
        h.update(name.encode())
        if pa.types.is_string(col.type):
            enc = pc.dictionary_encode(col)
            h.update(_joined(enc.dictionary, "\x1f"))
            h.update(pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False).astype("<i8").tobytes())
        elif pa.types.is_floating(col.type):
            arr = np.round(pc.fill_null(col, -1.0).to_numpy(zero_copy_only=False), 9)
            h.update(arr.astype("<f8").tobytes())
        else:
            h.update(pc.fill_null(col, -1).to_numpy(zero_copy_only=False).astype("<i8").tobytes())
    return h.hexdigest()


def compute_gold(
    bind: Any,
    collections: Sequence[str] | None = None,
    dimensions: Sequence[str] | None = None,
    *,
    method: str = "majority",
    threshold: float = DEFAULT_THRESHOLD,
    judge_id: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Gold rows as a pyarrow table (snapshot id 0), sorted by item id then dimension; and the params."""
    with data.item_ranges_reused():
        return _compute_gold(bind, collections, dimensions, method=method, threshold=threshold, judge_id=judge_id)


def _compute_gold(
    bind: Any,
    collections: Sequence[str] | None,
    dimensions: Sequence[str] | None,
    *,
    method: str,
    threshold: float,
    judge_id: str | None,
) -> tuple[Any, dict[str, Any]]:
    import pyarrow as pa

    sc = data.scope(bind, collections)
    dims = list(dimensions) if dimensions else sc.dimensions()
    items = item_reads.item_attributes(bind, sc.collection_ids)
    parts = []
    judge_ids: dict[str, str] = {}
    dim_labels: dict[str, list[str]] = {}
    for d_index, dim in enumerate(dims):
        spec = sc.dimension(dim)
        labels = list(spec["labels"])
        dim_labels[dim] = labels
        r = data.load_ratings(bind, sc.collection_ids, dim, labels, ordered=bool(spec.get("ordered")))
        adj = verdict_reads.load_adjudications(bind, sc.collection_ids, dim)
        cons = consensus_from_ratings(r, method=method, threshold=threshold, adjudications=adj)
        jid = judge_id or verdict_reads.default_judge(bind, sc.collection_ids, dim)
        judge_ids[dim] = jid or ""
        jcodes = (
            verdict_reads.load_verdicts(bind, sc.collection_ids, dim, labels, jid).codes_for(cons.item_ids)
            if jid
            else np.full(len(cons.item_ids), -1)
        )
        n = len(cons.item_ids)
        meth_codes, meth_names = _factorize(cons.method)
        parts.append(
            pa.table(
                {
                    "_order": pa.array(np.full(n, d_index, dtype=np.int32)),
                    "_pos": pa.array(np.searchsorted(items.ids, cons.item_ids).astype(np.int64)),
                    "item_id": pa.array(cons.item_ids.astype(np.int64)),
                    "dimension": _coded(np.zeros(n, dtype=np.int32), [dim]),
                    "label": _coded(cons.code, labels),
                    "method": _coded(meth_codes, meth_names),
                    "n_annotators": pa.array(cons.n_annotators.astype(np.int32)),
                    "agreement": _floats(cons.agreement),
                    "posterior": _floats(cons.posterior),
                    "judge_id": _coded(np.zeros(n, dtype=np.int32), [jid or ""]),
                    "judge_label": _coded(jcodes, labels),
                }
            )
        )
    if len(parts) == 1:
        t = parts[0]  # consensus item ids are sorted and distinct: already in (item_id, dimension) order
    elif parts:
        t = pa.concat_tables(parts).sort_by([("item_id", "ascending"), ("_order", "ascending")])
    else:
        t = pa.table(
            {
                "_pos": pa.array([], pa.int64()),
                "item_id": pa.array([], pa.int64()),
                **{c: pa.array([], pa.string()) for c in ("dimension", "label", "method", "judge_id", "judge_label")},
                "n_annotators": pa.array([], pa.int32()),
                "agreement": pa.array([], pa.float64()),
                "posterior": pa.array([], pa.float64()),
            }
        )
    pos = t.column("_pos").to_numpy()
    cols: dict[str, Any] = {"snapshot_id": np.zeros(t.num_rows, dtype=np.int64)}
    for c in ("collection", "task_type", "category", "model", "modality"):
        cols[c] = _coded(items.combo[pos], items.values[c])
    cols["external_id"] = items.external_id.take(pa.array(pos))
    for c in (
        "item_id",
        "dimension",
        "label",
        "method",
        "n_annotators",
        "agreement",
        "posterior",
        "judge_id",
        "judge_label",
    ):
        cols[c] = t.column(c)
    params = {
        "method": method,
        "threshold": threshold,
        "dimensions": dims,
        "labels": dim_labels,  # each dimension's labels, taxonomy order: the hf export's class labels
        "judge_id": judge_id,
        "judge_ids": judge_ids,
        "collections": [sc.collection_names[c] for c in sc.collection_ids],
        "collection_ids": list(sc.collection_ids),
    }
    return _table(cols), params


def _insert_gold(session: Any, snapshot_id: int, table: Any) -> None:
    """Bulk insert of the Gold rows (DB-API executemany on SQLite, COPY of pyarrow's CSV on PostgreSQL)."""
    from safereview.db.bulk import bulk_insert, sqlite_cache
    from safereview.db.models import Gold

    names = ["item_id", "dimension", "label", "method", "n_annotators", "agreement", "posterior", "judge_label"]
    conn = session.connection()
    # a larger SQLite page cache keeps the unique (snapshot, item, dimension) index in memory
    with sqlite_cache(conn, 256):
        bulk_insert(conn, Gold.__table__, names, table, const={"snapshot_id": int(snapshot_id)})  # type: ignore[attr-defined]


def create_snapshot(
    session: Any,
    user: Any,
    collections: Sequence[str] | None = None,
    dimensions: Sequence[str] | None = None,
    *,
    method: str = "majority",
    threshold: float = DEFAULT_THRESHOLD,
    judge_id: str | None = None,
    created_by: str = "",
) -> tuple[Any, Any]:
    """Compute gold labels, store a numbered ``GoldSnapshot`` with its rows; return (snapshot, pyarrow table).

    ``user`` is checked for the "export" permission (the CLI passes its system principal).
    When the newest snapshot of the same collections, method and parameters holds exactly
    these rows (same checksum), it is returned instead of a new identical one: exporting
    the same gold as Parquet, then CSV, then a Hugging Face dataset is one snapshot.
    """
    import pyarrow as pa

    from safereview.db.models import GoldSnapshot, utcnow

    require(user, "export")
    table, params = compute_gold(
        session, collections, dimensions, method=method, threshold=threshold, judge_id=judge_id
    )
    collection_ids = params.pop("collection_ids")
    params["population"] = population_summary(session, collections, judge_id=judge_id, method=method)
    same = _unchanged_snapshot(session, collection_ids, method, params, table)
    if same is not None:
        return same, table.set_column(0, "snapshot_id", pa.array(np.full(table.num_rows, int(same.id), dtype=np.int64)))
    # The checksum is arrow and hashlib work that releases the GIL: it runs on the other core
    # while the rows are written (0.5 s per million rows), and is stored before the commit.
    with ThreadPoolExecutor(max_workers=1) as pool:
        digest = pool.submit(checksum, table)
        snap = GoldSnapshot(
            method=method,
            params=params,
            collection_ids=collection_ids,
            n_rows=table.num_rows,
            checksum="",
            created_by=created_by or getattr(user, "username", ""),
            created_at=utcnow(),
        )
        session.add(snap)
        session.flush()
        _insert_gold(session, int(snap.id), table)
        snap.checksum = digest.result()
    session.flush()
    table = table.set_column(0, "snapshot_id", pa.array(np.full(table.num_rows, int(snap.id), dtype=np.int64)))
    return snap, table


def _unchanged_snapshot(session: Any, collection_ids: Any, method: str, params: dict[str, Any], table: Any) -> Any:
    """The newest snapshot with these collections, method, parameters and rows, if any."""
    from sqlmodel import select

    from safereview.db.models import GoldSnapshot

    newest = session.exec(
        select(GoldSnapshot).order_by(GoldSnapshot.id.desc()).limit(20)  # type: ignore[union-attr]
    ).all()
    wanted = json.loads(json.dumps(params, default=str))
    for snap in newest:
        if snap.method != method or sorted(snap.collection_ids or []) != sorted(collection_ids or []):
            continue
        if json.loads(json.dumps(snap.params, default=str)) != wanted:
            return None  # the newest of these collections differs: a new snapshot
        return snap if snap.n_rows == table.num_rows and snap.checksum == checksum(table) else None
    return None


def snapshot_table(bind: Any, snapshot_id: int):  # type: ignore[no-untyped-def]
    """Re-read a stored snapshot as a pyarrow table (same columns and rows as at creation).

    Gold rows keep the human side and the judge's label; item attributes (collection,
    external id, task type, …) come from the items, which change only through an import
    with ``--update``: :func:`changed_since` tells whether that happened.
    """
    with data.connection(bind) as conn:
        snap = data.fetch(conn, "SELECT id, params FROM goldsnapshot WHERE id = :s", {"s": snapshot_id})
        if not snap:
            raise data.AgreementError(f"no gold snapshot {snapshot_id}")
        params = snap[0][1] if isinstance(snap[0][1], dict) else json.loads(snap[0][1])
        rows = data.fetch(
            conn,
            "SELECT g.item_id, g.dimension, g.label, g.method, g.n_annotators, g.agreement, "
            "g.posterior, c.name, i.external_id, i.task_type, i.category, i.model, "
            "i.input_modalities || '->' || i.output_modalities, g.judge_label FROM gold g "
            "JOIN item i ON i.id = g.item_id JOIN collection c ON c.id = i.collection_id "
            "WHERE g.snapshot_id = :s ORDER BY g.id",
            {"s": snapshot_id},
        )
    cols: dict[str, Any] = {
        "snapshot_id": np.full(len(rows), snapshot_id, dtype=np.int64),
        "item_id": np.array([r[0] for r in rows], dtype=np.int64),
        "dimension": [r[1] for r in rows],
        "label": [r[2] for r in rows],
        "method": [r[3] for r in rows],
        "n_annotators": np.array([r[4] for r in rows], dtype=np.int64),
        "agreement": np.array([np.nan if r[5] is None else r[5] for r in rows], dtype=np.float64),
        "posterior": np.array([np.nan if r[6] is None else r[6] for r in rows], dtype=np.float64),
        "collection": [r[7] for r in rows],
        "external_id": [r[8] for r in rows],
        "task_type": [r[9] for r in rows],
        "category": [r[10] for r in rows],
        "model": [r[11] for r in rows],
        "modality": [r[12] for r in rows],
    }
    judge_ids = params.get("judge_ids")
    if isinstance(judge_ids, dict):  # stored with the rows (migration 0005 on)
        cols["judge_id"] = [str(judge_ids.get(r[1]) or "") for r in rows]
        cols["judge_label"] = [r[13] for r in rows]
    else:
        cols["judge_id"], cols["judge_label"] = _current_judge_columns(bind, params, rows)
    return _table(cols)


def _current_judge_columns(bind: Any, params: dict[str, Any], rows: list[tuple]) -> tuple[list[str], list[Any]]:
    """Snapshots made before migration 0005 stored no judge labels: today's verdicts stand in."""
    judge_labels: dict[tuple[int, str], tuple[str, str | None]] = {}
    sc_ids = None
    for dim in list(params.get("dimensions") or []):
        jid = params.get("judge_id")
        if sc_ids is None:
            sc_ids = data.scope(bind, params.get("collections")).collection_ids
        jid = jid or verdict_reads.default_judge(bind, sc_ids, dim)
        if not jid:
            continue
        with data.connection(bind) as conn:
            for iid, lab in data.fetch(
                conn, "SELECT item_id, label FROM verdict WHERE judge_id = :j AND dimension = :d", {"j": jid, "d": dim}
            ):
                judge_labels[(int(iid), dim)] = (jid, lab)
    return (
        [judge_labels.get((int(r[0]), r[1]), ("", None))[0] for r in rows],
        [judge_labels.get((int(r[0]), r[1]), ("", None))[1] for r in rows],
    )


def changed_since(table: Any, snapshot: Any) -> str | None:
    """A warning when a re-read snapshot no longer matches its checksum (items updated since), else None."""
    if not getattr(snapshot, "checksum", ""):
        return None
    if checksum(table) == snapshot.checksum:
        return None
    return (
        f"gold snapshot {snapshot.id} no longer matches its checksum: item attributes (or, for snapshots "
        "made before judge labels were stored, the judge's verdicts) changed since it was made; the export "
        "shows today's values beside the stored gold labels"
    )


# ---------------------------------------------------------------------------------------
# writers
# ---------------------------------------------------------------------------------------


def population_summary(
    bind: Any, collections: Sequence[str] | None, *, judge_id: str | None, method: str
) -> dict[str, Any]:
    """The collection-wide rates (judge / human / corrected) as a snapshot records them.

    The gold rows are the reviewed items only; these figures say what the people's labels
    imply for the whole collection, with the review sample they rest on.
    """
    from safereview.agreement.population import population_rates

    pop = population_rates(bind, collections, judge_id=judge_id, method=method)

    def finite(x: Any) -> Any:  # JSON (PostgreSQL's above all) has no NaN
        return None if isinstance(x, float) and not np.isfinite(x) else x

    def cut(e: dict[str, Any]) -> dict[str, Any]:
        return {k: finite(e[k]) for k in ("value", "low", "high", "n_labelled", "n_effective", "method")}

    return {
        "kind": pop["kind"],
        "sample": pop["sample"],
        "reference": pop["reference"],
        "judge_ids": pop["judge_ids"],
        "half_width": pop["half_width"],
        "metrics": [
            {
                "metric": m["metric"],
                "judge": finite(m["judge"]["value"]),
                "human": cut(m["human"]),
                "corrected": cut(m["corrected"]),
                "more_reviews": m["more_reviews"]["corrected"],
            }
            for m in pop["metrics"]
        ],
    }


def _rates_table(pop: dict[str, Any]) -> list[str]:
    from safereview.agreement.population import interval_text

    lines = [
        "",
        "## Rates over the collection",
        "",
        "judge = the judge's own share (uncorrected); human = the people's share over the review sample, "
        "weighted by the queue's sampling design; corrected = the judge on every item corrected by the "
        "people's labels (PPI++). 95% intervals. Review sample: "
        f"{pop['sample']['n_in_sample']} of {pop['sample']['n_items']} items.",
        "",
        "| rate | judge | human | corrected |",
        "|---|---|---|---|",
    ]
    for m in pop["metrics"]:
        judge = "—" if m["judge"] is None or m["judge"] != m["judge"] else f"{m['judge']:.3f}"
        name = str(m["metric"]).replace("|", "\\|")
        lines.append(f"| {name} | {judge} | {interval_text(m['human'])} | {interval_text(m['corrected'])} |")
    return lines


def dimension_labels(bind: Any, snapshot: Any) -> dict[str, list[str]]:
    """Each dimension's labels in taxonomy order: as recorded with the snapshot, or, for one made
    before they were recorded, the collections' taxonomy today (empty if it cannot be read)."""
    params = snapshot.params if isinstance(snapshot.params, dict) else {}
    if isinstance(params.get("labels"), dict):
        return {str(d): [str(x) for x in labs] for d, labs in params["labels"].items()}
    try:
        sc = data.scope(bind, params.get("collections"))
        return {d: list(sc.dimension(d)["labels"]) for d in params.get("dimensions") or []}
    except data.AgreementError:  # a collection renamed or a dimension dropped since
        return {}


def class_names(labels: dict[str, Sequence[str]], table: Any) -> list[str]:
    """The class names of ``label`` and ``judge_label``: every dimension's labels in taxonomy order,
    each once (one column holds every dimension); a value outside them is appended, never lost."""
    import pyarrow.compute as pc

    names = list(dict.fromkeys(str(lab) for labs in labels.values() for lab in labs))
    for col in LABEL_COLUMNS:
        for value in pc.unique(table.column(col)).to_pylist():
            if value is not None and value not in names:
                names.append(value)
    return names


def hf_features(schema: Any, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The ``datasets.Features`` of the hf Parquet file as ``Features.to_dict()`` writes it: built by
    hand so that writing needs no ``datasets``."""
    return {
        f.name: (
            {"names": list(names), "_type": "ClassLabel"}
            if f.name in LABEL_COLUMNS
            else {"dtype": _HF_DTYPES[str(f.type)], "_type": "Value"}
        )
        for f in schema
    }


def _yaml_features(features: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The same features as the dataset card's ``dataset_info`` list (``Features._to_yaml_list``)."""
    return [
        {
            "name": name,
            "dtype": f["dtype"]
            if f["_type"] == "Value"
            else {"class_label": {"names": {str(i): n for i, n in enumerate(f["names"])}}},
        }
        for name, f in features.items()
    ]


def hf_table(table: Any, labels: dict[str, Sequence[str]]) -> tuple[Any, dict[str, dict[str, Any]]]:
    """The gold table as the hf Parquet file holds it, and its features: the label columns as int64
    codes into :func:`class_names` (null on a tie or without a verdict), the features in the schema
    metadata under ``huggingface`` (where ``datasets.Features.from_arrow_schema`` reads them) and
    each dimension's labels under ``safereview``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    names = class_names(labels, table)
    value_set = pa.array(names, type=pa.string())
    for col in LABEL_COLUMNS:  # int64, ClassLabel's own type: datasets ignores recorded features of another type
        codes = pc.index_in(table.column(col), value_set=value_set).cast(pa.int64())
        table = table.set_column(table.schema.get_field_index(col), col, codes)
    features = hf_features(table.schema, names)
    metadata = {
        b"huggingface": json.dumps({"info": {"features": features}}).encode(),
        b"safereview": json.dumps({"labels": {d: list(v) for d, v in labels.items()}}).encode(),
    }
    return table.replace_schema_metadata(metadata), features


def _labels_section(features: dict[str, dict[str, Any]], labels: dict[str, Sequence[str]]) -> list[str]:
    """The card's "Labels": what each code means, and which labels each dimension can take
    (``datasets`` keeps no free text from a folder, so the taxonomy is written here)."""
    names = features["label"]["names"]

    def cell(text: Any) -> str:
        return str(text).replace("|", "\\|")

    lines = [
        "",
        "## Labels",
        "",
        "`label` (the gold label) and `judge_label` (the judge's) are class labels (`datasets.ClassLabel`): "
        "in the Parquet file an integer code into the names below, null when there is none (a tie, no "
        'verdict). `features["label"].int2str(code)` gives the name.',
        "",
        "| code | name |",
        "|---|---|",
        *(f"| {i} | {cell(n)} |" for i, n in enumerate(names)),
    ]
    if labels:
        lines += [
            "",
            "Each dimension takes its own labels (taxonomy order):",
            "",
            "| dimension | labels |",
            "|---|---|",
        ]
        lines += [f"| {cell(d)} | {', '.join(cell(x) for x in labs)} |" for d, labs in labels.items()]
    return lines


def _front_matter(data_file: str, features: dict[str, dict[str, Any]] | None) -> str:
    """The YAML the hub and ``datasets`` read: the split, and the features (the same as the Parquet
    file's metadata: ``datasets`` prefers these when both are present)."""
    import yaml

    front: dict[str, Any] = {
        "configs": [{"config_name": "default", "data_files": [{"split": "gold", "path": data_file}]}]
    }
    if features is not None:
        front["dataset_info"] = {"features": _yaml_features(features)}
    front["tags"] = ["safety", "human-annotation"]
    return "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n"


def dataset_card(
    snapshot: Any,
    n_rows: int,
    data_file: str,
    features: dict[str, dict[str, Any]] | None = None,
    labels: dict[str, Sequence[str]] | None = None,
) -> str:
    """README.md with the YAML front matter the Hugging Face hub and ``datasets`` read."""
    params = snapshot.params if isinstance(snapshot.params, dict) else {}
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
        "**Which items.** " + ROWS_ARE_NOT_A_RANDOM_SAMPLE,
        "",
        'Load with `datasets.load_dataset("<this folder>")` (one split, `gold`; the `collection` column '
        "says which collection a row comes from), or read the Parquet file directly.",
    ]
    if features is not None and "label" in features:
        body += _labels_section(features, labels or {})
    if isinstance(params.get("population"), dict) and params["population"].get("metrics"):
        body += _rates_table(params["population"])
    return _front_matter(data_file, features) + "\n" + "\n".join(body) + "\n"


def _write_hf(table: Any, out: Path, snapshot: Any, labels: dict[str, Sequence[str]] | None) -> list[Path]:
    """The dataset folder: the coded Parquet file and the card declaring its split and features."""
    import pyarrow.parquet as pq

    if labels is None:
        params = getattr(snapshot, "params", None)
        labels = (params.get("labels") if isinstance(params, dict) else None) or {}
    coded, features = hf_table(table, labels)
    (out / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(coded, out / HF_DATA_FILE)
    card = dataset_card(snapshot, table.num_rows, HF_DATA_FILE, features, labels)
    (out / "README.md").write_text(card, encoding="utf-8")
    return [out / HF_DATA_FILE, out / "README.md"]


def write(
    table: Any,
    out: str | Path,
    fmt: str,
    snapshot: Any = None,
    *,
    raw_csv: bool = False,
    labels: dict[str, Sequence[str]] | None = None,
) -> list[Path]:
    """Write the gold table as jsonl, csv, parquet, or a Hugging Face folder (``hf``).

    CSV cells that would start a spreadsheet formula are defused unless ``raw_csv``; JSONL
    escapes U+2028, U+2029 and U+0085 (``safereview.dataio.spreadsheet``). ``labels`` (each
    dimension's labels, :func:`dimension_labels`) names the hf folder's classes; by default
    those recorded with the snapshot."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from safereview.dataio.spreadsheet import defuse, escape_line_breaks

    out = Path(out)
    if fmt not in FORMATS:
        raise data.AgreementError(f"format must be one of {', '.join(FORMATS)}")
    if fmt == "hf":
        return _write_hf(table, out, snapshot, labels)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        pq.write_table(table, out)
    elif fmt == "csv":
        pacsv.write_csv(table if raw_csv else defuse(table), out)  # no cell runs as a spreadsheet formula
    else:
        with out.open("w", encoding="utf-8") as fh:
            for batch in table.to_batches(max_chunksize=65536):
                for row in batch.to_pylist():
                    fh.write(escape_line_breaks(json.dumps(row, ensure_ascii=False, allow_nan=False)) + "\n")
    return [out]


def list_snapshots(session: Any, user: Any, limit: int = 50) -> list[dict[str, Any]]:
    """The newest gold snapshots, one summary dict each (the Gold page's table)."""
    from sqlmodel import select

    from safereview.db.models import GoldSnapshot

    require(user, "export")
    snaps = session.exec(select(GoldSnapshot).order_by(GoldSnapshot.id.desc()).limit(max(1, limit))).all()  # type: ignore[union-attr]
    return [
        {
            "snapshot": g.id,
            "method": g.method,
            "rows": g.n_rows,
            "checksum": g.checksum,
            "collections": ", ".join(map(str, (g.params or {}).get("collections", []))),
            "by": g.created_by,
            "at": str(g.created_at),
        }
        for g in snaps
    ]

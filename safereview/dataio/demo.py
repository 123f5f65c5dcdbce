"""Build the demo database from the bundled demo files (``safereview.data``) through the public import path.

``build_demo`` is idempotent: a second run finds every row already imported with the same
content and changes nothing (no new import batch either). The demo's imported annotators
(``carol``, ``dave``, ``vlsu-consensus``) get unusable passwords; the app's ``safereview
demo`` command adds the sign-in accounts.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safereview.data import DEMO_DIR
from safereview.dataio.importers import ImportReport, import_file
from safereview.workflow.principals import SystemPrincipal

UNI_TASK_FILES = (
    "malicious_text_generation",
    "unsafe_t2i_generation",
    "malicious_image_editing",
    "dual_unsafe",
    "image_unsafe",
    "text_unsafe",
    "composite_unsafe",
)
UNI_COLLECTION = "uni-safebench / demo-unified-model"
VLSU_COLLECTION = "vlsu / demo"
AV_COLLECTION = "demo-av / demo-av-model"
DEMO_PRINCIPAL = SystemPrincipal("demo")  # who imports the demo files


def demo_plan(data_dir: Path = DEMO_DIR) -> list[dict[str, Any]]:
    """The imports that make up the demo, in order (file, collection, taxonomy, media folder)."""
    uni = data_dir / "uni-safebench"
    plan: list[dict[str, Any]] = [
        {
            "path": uni / f"{name}.jsonl",
            "collection": UNI_COLLECTION,
            "taxonomy": "uni-safebench",
            "format": "uni-safebench",
            "media_dir": uni,
        }
        for name in UNI_TASK_FILES
    ]
    vlsu = data_dir / "vlsu"
    plan += [
        {
            "path": vlsu / "vlsu_demo.csv",
            "collection": VLSU_COLLECTION,
            "taxonomy": "vlsu",
            "format": "vlsu",
            "media_dir": vlsu / "images",
        },
        {
            "path": vlsu / "judge_verdicts.jsonl",
            "collection": VLSU_COLLECTION,
            "taxonomy": "vlsu",
            "format": "generic",
            "media_dir": vlsu,
        },
    ]
    custom = data_dir / "custom"
    tax = str(custom / "taxonomy.toml")
    plan += [
        {
            "path": custom / "items.jsonl",
            "collection": AV_COLLECTION,
            "taxonomy": tax,
            "format": "generic",
            "media_dir": custom,
        },
        {
            "path": custom / "annotations.csv",
            "collection": AV_COLLECTION,
            "taxonomy": tax,
            "format": "generic",
            "media_dir": custom,
        },
    ]
    return plan


SHIFT_FILE = Path("uni-safebench") / "review_shift.jsonl"
SHIFT_REVIEWS = 24  # about a dozen of the 21 items, two reviews each: a sample, not a census
SHIFT_SEED = 2026  # the demo's sampling design is the same on every machine
DEMO_JUDGE = "uni-judger-demo"


def play_review_shift(engine: Any, data_dir: Path = DEMO_DIR, *, reviews: int = SHIFT_REVIEWS) -> int:
    """The demo reviewers work through the Uni-SafeBench collection's queue; returns the reviews done.

    Each pull is the real queue's (``workflow.queue.next_item``), which freezes the
    collection's sampling design at the first one; each label comes from
    ``review_shift.jsonl`` and is committed blind, then confirmed or overridden against the
    demo judge, as in the app. Played once: a collection whose design is already frozen
    has had its shift.
    """
    import json
    import random

    from sqlmodel import Session, select

    from safereview.db.engine import session_scope
    from safereview.db.models import Item, User
    from safereview.workflow.annotations import finalize, submit
    from safereview.workflow.collections import get_collection
    from safereview.workflow.queue import QueueFilter, next_item

    labels: dict[tuple[str, str], dict[str, str]] = {}
    for line in (data_dir / SHIFT_FILE).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        labels[(row["id"], row["reviewer"])] = row["labels"]
    with Session(engine) as s:
        col = get_collection(s, UNI_COLLECTION)
        if col.design_frozen_at is not None:
            return 0
        cid = int(col.id)  # type: ignore[arg-type]
        names = sorted({r for _, r in labels})
        users = [s.exec(select(User).where(User.username == n)).one() for n in names]
        for u in users:
            s.expunge(u)
    rng = random.Random(SHIFT_SEED)
    done, idle = 0, 0
    while done < reviews and idle < len(users):
        user = users[done % len(users)] if idle == 0 else users[(done + idle) % len(users)]
        a = next_item(engine, user, QueueFilter(cid), rng=rng)
        if a is None:
            idle += 1
            continue
        idle = 0
        with session_scope(engine) as s:
            ext = s.get(Item, a.item_id).external_id.rsplit("/", 1)[-1]  # type: ignore[union-attr]
            mine = labels[(ext, user.username)]
            ann = submit(s, user, a.id, mine)
            finalize(s, user, int(ann.id), mine, expected_version=ann.version, judge_id=DEMO_JUDGE)  # type: ignore[arg-type]
        done += 1
    return done


def build_demo(db_url: str, media_root: Path, *, data_dir: Path = DEMO_DIR) -> dict[str, Any]:
    """Initialise the database at ``db_url`` and import every demo file; returns a summary.

    Raises :class:`dataio.importers.ImportFailed` if any demo file does not import (which
    would be a bug: the demo data are generated by ``python -m safereview.data.make_demo``).
    """
    from safereview.db.engine import init_db

    engine = init_db(db_url)
    reports: list[ImportReport] = []
    try:
        for step in demo_plan(data_dir):
            rep = import_file(
                engine,
                step["path"],
                actor=DEMO_PRINCIPAL,
                format=step["format"],
                collection=step["collection"],
                taxonomy=step["taxonomy"],
                media_dir=step["media_dir"],
                media_root=Path(media_root),
                user="demo",
            )
            rep.raise_for_errors()
            reports.append(rep)
        shift = play_review_shift(engine, data_dir)
    finally:
        engine.dispose()
    summary: dict[str, Any] = {"collections": {}, "files": []}
    for rep in reports:
        c = summary["collections"].setdefault(
            rep.collection, {"items_new": 0, "verdicts_new": 0, "annotations_new": 0, "items_unchanged": 0}
        )
        c["items_new"] += rep.items_new
        c["verdicts_new"] += rep.verdicts_new
        c["annotations_new"] += rep.annotations_new
        c["items_unchanged"] += rep.items_unchanged
        summary["files"].append(
            {"file": rep.source, "format": rep.format, "batch_id": rep.batch_id, "changed": rep.changed}
        )
    summary["review_shift"] = shift
    summary["changed"] = any(r.changed for r in reports) or shift > 0
    return summary


class DemoError(Exception):
    """The demo could not be built; the message names the cause and nothing was left half-built."""


DB_NAME = "safereview.db"
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def _record_media(db_url: str, media: Path) -> None:
    from safereview.db.deployment import record_media_root
    from safereview.db.engine import make_engine

    engine = make_engine(db_url)
    try:
        record_media_root(engine, media, replace=True)
    finally:
        engine.dispose()


def missing_demo_files(data_dir: Path = DEMO_DIR) -> list[Path]:
    """Files the demo plan needs that are not installed (a broken install, not a user error)."""
    return [step["path"] for step in demo_plan(data_dir) if not Path(step["path"]).is_file()]


def build_demo_folder(
    directory: Path,
    *,
    finish: Callable[[str], Any] | None = None,
    data_dir: Path = DEMO_DIR,
) -> dict[str, Any]:
    """Build (or re-check) the demo in ``directory``: ``safereview.db`` and ``media/``.

    A new demo is built in a temporary folder beside ``directory`` and moved into place
    only when every file imported and ``finish(db_url)`` (e.g. adding the sign-in accounts)
    succeeded, so a failure leaves nothing behind. An existing demo is re-imported in place;
    each import is one transaction, so a failure there changes nothing either.
    Raises :class:`DemoError` naming the real cause.
    """
    from safereview.dataio.importers import ImportFailed

    missing = missing_demo_files(data_dir)
    if missing:
        raise DemoError(
            f"the bundled demo data are not installed ({len(missing)} file{'s' if len(missing) != 1 else ''} "
            f"missing, e.g. {missing[0]}); "
            "reinstall safereview"
        )
    directory = Path(directory).resolve()
    if (directory / DB_NAME).exists():
        try:
            summary = build_demo(f"sqlite:///{directory / DB_NAME}", directory / "media", data_dir=data_dir)
        except ImportFailed as exc:
            raise DemoError(
                f"{directory / DB_NAME} holds a demo that does not match this version's demo data "
                f"(nothing was changed; delete {directory} to rebuild it):\n{exc}"
            ) from None
        if finish is not None:
            finish(f"sqlite:///{directory / DB_NAME}")
        return summary
    directory.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{directory.name}.building-", dir=directory.parent))
    try:
        db_url = f"sqlite:///{work / DB_NAME}"
        try:
            summary = build_demo(db_url, work / "media", data_dir=data_dir)
        except ImportFailed as exc:
            raise DemoError(f"the bundled demo data do not import (a bug in safereview):\n{exc}") from None
        if finish is not None:
            finish(db_url)
        _record_media(db_url, work / "media")  # relative to the database's folder: survives the move
        directory.mkdir(parents=True, exist_ok=True)
        for name in (DB_NAME, *(DB_NAME + s for s in SQLITE_SIDE_FILES), "media"):
            if (work / name).exists():
                os.replace(work / name, directory / name)
        return summary
    finally:
        shutil.rmtree(work, ignore_errors=True)

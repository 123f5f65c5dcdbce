"""The demo data build through the public import path, covers what it promises, and is idempotent."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import dataio_support as ds
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from safereview.cli.main import app
from safereview.dataio.demo import (
    AV_COLLECTION,
    DEMO_DIR,
    UNI_COLLECTION,
    VLSU_COLLECTION,
    DemoError,
    build_demo,
    build_demo_folder,
)
from safereview.db.engine import make_engine
from safereview.db.models import Annotation, Collection, Item, Media, User, Verdict
from safereview.db.taxonomy import PRESETS


def _all(engine: sa.Engine, model: type) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.select(model.__table__)).all()  # type: ignore[attr-defined]


def test_demo_builds_covers_the_brief_and_is_idempotent(db_url: str, tmp_path: Path) -> None:
    root = tmp_path / "media"
    summary = build_demo(db_url, root)
    assert summary["changed"] and summary["review_shift"] == 24
    engine = make_engine(db_url)
    before = ds.snapshot(engine)
    again = build_demo(db_url, root)
    assert not again["changed"]
    assert ds.snapshot(engine) == before

    cols = {c.id: c.name for c in _all(engine, Collection)}
    items = _all(engine, Item)
    by_col: dict[str, list] = {}
    for it in items:
        by_col.setdefault(cols[it.collection_id], []).append(it)
    uni = by_col[UNI_COLLECTION]
    per_task = Counter(i.task_type for i in uni)
    assert set(per_task) == {t["id"] for t in PRESETS["uni-safebench"]["task_types"]}
    assert min(per_task.values()) >= 3
    assert any(i.refused and i.output_modalities == "image" for i in uni)
    assert any(p["modality"] == "image" for i in uni for p in i.response)
    # the review shift went through the real queue: a design sample, so the lead sees corrected rates
    from safereview.agreement.population import population_rates

    pop = population_rates(engine, [UNI_COLLECTION])
    assert 8 <= pop["sample"]["n_in_sample"] < len(uni)
    rates = {m["metric"]: m for m in pop["metrics"]}
    for name in ("C-Unsafe", "C-Reject", "I-Unsafe", "Both-Safe"):
        c = rates[name]["corrected"]
        assert 0.0 <= c["low"] <= c["value"] <= c["high"] <= 1.0 and c["high"] > c["low"], name
        assert rates[name]["more_reviews"]["corrected"] >= 0
    vlsu = by_col[VLSU_COLLECTION]
    assert len(vlsu) >= 20
    anns = {a.item_id: a.labels for a in _all(engine, Annotation)}
    patterns = Counter((anns[i.id].get("image"), anns[i.id].get("text"), anns[i.id].get("joint")) for i in vlsu)
    assert patterns[("safe", "safe", "unsafe")] >= 2
    assert sum(n for p, n in patterns.items() if "borderline" in p) >= 5
    av = by_col[AV_COLLECTION]
    mods = {m for i in av for p in i.prompt + i.response for m in [p["modality"]]}
    assert {"audio", "video"} <= mods
    kinds = Counter(m.kind for m in _all(engine, Media))
    assert kinds["image"] > 40 and kinds["audio"] >= 4 and kinds["video"] >= 2
    verdicts = _all(engine, Verdict)
    assert any(v.probability is not None for v in verdicts) and any(v.status == "unparseable" for v in verdicts)
    users = {u.username: u for u in _all(engine, User)}
    assert {"carol", "dave", "vlsu-consensus"} <= set(users)
    assert all(u.password_hash.startswith("!") for u in users.values())
    engine.dispose()


VIDEO_SUFFIXES = {".mp4", ".webm"}


def _same_video(a: Path, b: Path) -> None:
    """Same frames (count, size, and pixels within a small tolerance).

    x264 was seen to emit different bytes for the same input once, in a CI run on a busy
    machine, although it runs single-threaded; a re-encode must still show the same picture.
    """
    import av
    import numpy as np

    def frames(path: Path) -> list[np.ndarray]:
        with av.open(str(path)) as c:
            return [fr.to_ndarray(format="rgb24").astype(np.int16) for fr in c.decode(video=0)]

    fa, fb = frames(a), frames(b)
    assert len(fa) == len(fb) and fa and fa[0].shape == fb[0].shape, f"{b}: frames differ from make_demo.py's"
    worst = max(float(np.abs(x - y).mean()) for x, y in zip(fa, fb, strict=True))
    assert worst < 4.0, f"{b}: pixels differ from make_demo.py's (mean abs difference {worst:.1f})"


def test_demo_files_are_small_benign_and_reproducible(tmp_path: Path) -> None:
    total = sum(f.stat().st_size for f in DEMO_DIR.rglob("*") if f.is_file() and "__pycache__" not in f.parts)
    assert total < 3 * 1024 * 1024
    subprocess.run(
        [sys.executable, "-m", "safereview.data.make_demo", "--out", str(tmp_path)], check=True, capture_output=True
    )
    for f in DEMO_DIR.rglob("*"):
        if f.is_file() and f.name != "make_demo.py" and "__pycache__" not in f.parts:
            regenerated = tmp_path / f.relative_to(DEMO_DIR)
            if f.suffix in VIDEO_SUFFIXES:  # encoders promise the picture, not the bytes (see _same_video)
                _same_video(regenerated, f)
                continue
            assert regenerated.read_bytes() == f.read_bytes(), f"{f} differs from what make_demo.py generates"


def test_demo_collections_listed_by_cli(sqlite_url: str, tmp_path: Path) -> None:
    build_demo(sqlite_url, tmp_path / "media")
    r = CliRunner().invoke(app, ["collections", "--db", sqlite_url], env={"COLUMNS": "80"})
    assert r.exit_code == 0
    assert "vlsu" in r.output and "demo-av" in r.output and " 22 " in r.output and " 21 " in r.output
    assert "demo-unified-model" in r.output  # at 80 columns a name wraps at its spaces, never inside a word
    # the VLSU demo has one reviewer per item: every coefficient is undefined, each shown as "-"
    # with its reason once under the table (not repeated, cut short, in every cell)
    r = CliRunner().invoke(
        app, ["agreement", "--db", sqlite_url, "-c", "vlsu / demo", "--resamples", "10"], env={"COLUMNS": "200"}
    )
    assert r.exit_code == 0, r.output
    joint = r.output.split("joint (ordinal")[1]
    row = next(line for line in joint.splitlines() if "overall" in line)
    assert [cell.strip() for cell in row.split("│")[5:10]] == ["-"] * 5
    assert "-: alpha, alpha (nominal) undefined: fewer than 2 pairable values" in joint
    assert "-: percent agreement, Gwet AC1, Fleiss kappa undefined: no unit has two or more ratings" in joint
    assert "undefined: undefined" not in r.output


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def test_a_failed_demo_build_leaves_nothing_and_names_the_cause(tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(DEMO_DIR, data)
    broken = data / "vlsu" / "vlsu_demo.csv"
    broken.write_text(broken.read_text(encoding="utf-8") + "not,a,valid,row\n", encoding="utf-8")
    parent = tmp_path / "out"
    parent.mkdir()
    with pytest.raises(DemoError, match="do not import") as info:
        build_demo_folder(parent / "demo", data_dir=data)
    assert "vlsu_demo.csv" in str(info.value) and "delete" not in str(info.value)
    assert _leftovers(parent) == [], "a failed build left files behind"

    broken.unlink()
    with pytest.raises(DemoError, match="not installed") as info:
        build_demo_folder(parent / "demo", data_dir=data)
    assert "vlsu_demo.csv" in str(info.value)
    assert _leftovers(parent) == []


def test_the_demo_command_builds_once_and_rechecks_in_place(tmp_path: Path) -> None:
    seen: list[str] = []
    first = build_demo_folder(tmp_path / "demo", finish=seen.append)
    assert first["changed"] and _leftovers(tmp_path) == ["demo"]
    assert _leftovers(tmp_path / "demo") == ["media", "safereview.db"]
    again = build_demo_folder(tmp_path / "demo", finish=seen.append)
    assert not again["changed"] and len(seen) == 2
    r = CliRunner().invoke(app, ["demo", "--dir", str(tmp_path / "demo"), "--no-serve"])
    assert r.exit_code == 0, r.output
    assert "admin" in r.output and _leftovers(tmp_path) == ["demo"]


def test_a_database_knows_its_media_wherever_its_folder_goes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo records its media root in the database (relative to the database's folder), so a
    judge run against the moved demo finds every image without --media-root."""
    from safereview.db.deployment import stored_media_root

    monkeypatch.delenv("SAFEREVIEW_MEDIA_ROOT", raising=False)
    res = CliRunner().invoke(app, ["demo", "--dir", str(tmp_path / "built"), "--no-serve"])
    assert res.exit_code == 0, res.output
    moved = tmp_path / "elsewhere" / "demo"
    moved.parent.mkdir()
    shutil.move(str(tmp_path / "built"), moved)
    url = f"sqlite:///{moved / 'safereview.db'}"
    engine = make_engine(url)
    try:
        assert stored_media_root(engine) == (moved / "media").resolve()
    finally:
        engine.dispose()
    res = CliRunner().invoke(
        app,
        [
            *("judge", "--db", url, "--protocol", "uni-judger", "--base-url", "http://127.0.0.1:9/v1", "--model", "m"),
            *("-c", UNI_COLLECTION, "--dry-run", "--limit", "40"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert res.output.count('"image_url"') >= 10  # the demo's images, read from the moved folder
    # an explicit root wins, and init records it for the commands that follow
    res = CliRunner().invoke(app, ["init", "--db", url, "--media-root", str(tmp_path / "other")])
    assert res.exit_code == 0 and "media root:" in res.output
    engine = make_engine(url)
    try:
        assert stored_media_root(engine) == (tmp_path / "other").resolve()
    finally:
        engine.dispose()

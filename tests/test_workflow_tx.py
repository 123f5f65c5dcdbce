"""Which failed write transactions are run again (``workflow.tx.is_transient``), on real errors of both back ends.

A lock conflict or the duplicate lease of a second browser tab may succeed on a second try;
any other constraint or database error would only fail again, so it must surface at once
instead of after five retries.
"""

from __future__ import annotations

import contextlib
import random
import socket
import sqlite3
import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select
from workflow_support import VLSU_SAFE, make_collection, make_user

from safereview.db.engine import init_db, session_scope
from safereview.db.models import Annotation, AnnotationEvent, Assignment, JudgeConfig, User, utcnow
from safereview.workflow import annotations as ann_mod
from safereview.workflow.annotations import finalize_and_next, replay_events, stored_state, submit, submit_and_next
from safereview.workflow.errors import Conflict
from safereview.workflow.queue import QueueFilter, next_item
from safereview.workflow.tx import is_transient, retry_transient


def _error_of(engine: sa.Engine, sql: str, params: dict | None = None) -> sa.exc.DBAPIError:
    with pytest.raises(sa.exc.DBAPIError) as caught, engine.begin() as conn:
        conn.execute(sa.text(sql), params or {})
    return caught.value


def _item_and_user(engine: sa.Engine) -> tuple[int, int]:
    cid = make_collection(engine, n_items=2)
    user = make_user(engine, "ann")
    with session_scope(engine) as s:
        item = s.execute(sa.text("SELECT MIN(id) FROM item WHERE collection_id = :c"), {"c": cid}).scalar_one()
    return int(item), int(user.id)  # type: ignore[arg-type]


LEASE = (
    "INSERT INTO assignment (item_id, user_id, status, stratum, leased_at) "
    "VALUES (:item, :user, 'leased', 'sample', :now)"
)


def test_a_duplicate_lease_is_transient_and_other_constraints_are_not(engine: sa.Engine) -> None:
    item, user = _item_and_user(engine)
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(sa.text(LEASE), {"item": item, "user": user, "now": now})
    duplicate_lease = _error_of(engine, LEASE, {"item": item, "user": user, "now": now})
    assert isinstance(duplicate_lease, sa.exc.IntegrityError)
    assert is_transient(duplicate_lease)

    no_such_item = _error_of(engine, LEASE, {"item": 10**9, "user": user, "now": now})  # foreign key
    missing_status = _error_of(
        engine,
        "INSERT INTO assignment (item_id, user_id, status, stratum, leased_at) VALUES (:i, :u, NULL, 'sample', :n)",
        {"i": item + 1, "u": user, "n": now},
    )
    duplicate_name = _error_of(engine, 'INSERT INTO "user" (username, role) SELECT username, role FROM "user"')
    for exc in (no_such_item, missing_status, duplicate_name):
        assert isinstance(exc, sa.exc.IntegrityError), exc
        assert not is_transient(exc), exc


def test_sqlite_lock_is_transient_and_a_missing_table_is_not(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "locks.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x INTEGER)")
    impatient = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    try:
        holder.execute("BEGIN IMMEDIATE")
        locked = _error_of(impatient, "INSERT INTO t VALUES (1)")
        holder.execute("ROLLBACK")
        assert isinstance(locked, sa.exc.OperationalError) and "locked" in str(locked)
        assert is_transient(locked)
        missing = _error_of(impatient, "INSERT INTO nowhere VALUES (1)")
        assert isinstance(missing, sa.exc.OperationalError)
        assert not is_transient(missing)
    finally:
        impatient.dispose()
        holder.close()


@pytest.mark.postgres
def test_postgres_conflicts_are_transient_and_a_timeout_is_not(pg_url: str) -> None:
    eng = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with eng.begin() as conn:
            conn.execute(sa.text("CREATE TABLE t (id INTEGER PRIMARY KEY, x INTEGER)"))
            conn.execute(sa.text("INSERT INTO t VALUES (1, 0)"))
        first = eng.connect()
        try:
            first.execute(sa.text("SELECT x FROM t WHERE id = 1 FOR UPDATE"))
            busy = _error_of(eng, "SELECT x FROM t WHERE id = 1 FOR UPDATE NOWAIT")
            assert getattr(busy.orig, "sqlstate", None) == "55P03"
            assert is_transient(busy)
            first.rollback()

            # a serialisation failure: a REPEATABLE READ transaction updates a row changed since its snapshot
            second = eng.connect().execution_options(isolation_level="REPEATABLE READ")
            second.begin()
            second.execute(sa.text("SELECT x FROM t"))
            with first.begin():
                first.execute(sa.text("UPDATE t SET x = 1 WHERE id = 1"))
            with pytest.raises(sa.exc.DBAPIError) as caught:
                second.execute(sa.text("UPDATE t SET x = 2 WHERE id = 1"))
            second.rollback()
            second.close()
            assert getattr(caught.value.orig, "sqlstate", None) == "40001"
            assert is_transient(caught.value)
        finally:
            first.close()
        timeout = _error_of(eng, "SET LOCAL statement_timeout = 1; SELECT pg_sleep(1)")
        assert isinstance(timeout, sa.exc.OperationalError) and timeout.orig.sqlstate == "57014"  # type: ignore[union-attr]
        assert not is_transient(timeout)
    finally:
        eng.dispose()


def test_retry_runs_a_transient_failure_again_and_raises_any_other_at_once(engine: sa.Engine) -> None:
    item, user = _item_and_user(engine)
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(sa.text(LEASE), {"item": item, "user": user, "now": now})
    calls: list[str] = []

    def lease_then_succeed() -> str:
        calls.append("try")
        if len(calls) < 3:  # the duplicate lease of a second tab, twice
            with engine.begin() as conn:
                conn.execute(sa.text(LEASE), {"item": item, "user": user, "now": now})
        return "done"

    assert retry_transient(lease_then_succeed, random.Random(0)) == "done"
    assert len(calls) == 3

    calls.clear()

    def foreign_key_failure() -> str:
        calls.append("try")
        with engine.begin() as conn:
            conn.execute(sa.text(LEASE), {"item": 10**9, "user": user, "now": now})
        return "never"

    with pytest.raises(sa.exc.IntegrityError):
        retry_transient(foreign_key_failure, random.Random(0))
    assert calls == ["try"]

    calls.clear()

    def always_transient() -> str:
        calls.append("try")
        with engine.begin() as conn:
            conn.execute(sa.text(LEASE), {"item": item, "user": user, "now": now})
        return "never"

    with pytest.raises(sa.exc.IntegrityError):
        retry_transient(always_transient, random.Random(0), attempts=4)
    assert len(calls) == 4


# ---------------------------------------------------------------------------------------
# a connection lost at COMMIT: the write may or may not have gone in
# ---------------------------------------------------------------------------------------


class CuttingProxy:
    """A TCP relay to PostgreSQL that cuts one connection where a test says.

    ``cut_at(trigger, after_reply=True)``: the client message holding ``trigger`` reaches the
    server and the server's answer is dropped with the connection (a COMMIT that went in
    while the client hears only a lost connection). ``after_reply=False``: the message is
    dropped with the connection before the server sees it (nothing of the transaction stays).
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.trigger: bytes | None = None
        self.after_reply = True
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_at(self, trigger: bytes, *, after_reply: bool) -> None:
        with self.lock:
            self.trigger, self.after_reply = trigger, after_reply

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            state = {"cut_on_reply": False}
            threading.Thread(target=self._relay, args=(client, upstream, state, True), daemon=True).start()
            threading.Thread(target=self._relay, args=(upstream, client, state, False), daemon=True).start()

    def _cut(self, *socks: socket.socket) -> None:
        self.cuts += 1
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _relay(self, src: socket.socket, dst: socket.socket, state: dict[str, bool], from_client: bool) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            if from_client:
                with self.lock:
                    hit = self.trigger is not None and self.trigger in data
                    if hit:
                        self.trigger = None
                if hit and not self.after_reply:
                    self._cut(src, dst)
                    return
                state["cut_on_reply"] = state["cut_on_reply"] or hit
            elif state["cut_on_reply"]:
                self._cut(src, dst)
                return
            try:
                dst.sendall(data)
            except OSError:
                return


@pytest.fixture
def cut_engine(pg_url: str) -> Iterator[tuple[sa.Engine, CuttingProxy]]:
    """The services' engine on a fresh PostgreSQL schema, reached through a :class:`CuttingProxy`."""
    init_db(pg_url).dispose()
    url = sa.engine.make_url(pg_url)
    proxy = CuttingProxy((url.host or "127.0.0.1", url.port or 5432))
    eng = init_db(url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False))
    try:
        yield eng, proxy
    finally:
        eng.dispose()
        proxy.close()


def _one_item_each(eng: sa.Engine) -> tuple[int, User]:
    cid = make_collection(eng, n_items=3, k=1, audit_share=0.0, blind=True, priorities=[0.9, 0.5, 0.1])
    with session_scope(eng) as s:
        s.add(JudgeConfig(id="j1", protocol="vlsu"))
    return cid, make_user(eng, "ann")


def _stored(eng: sa.Engine, user: User) -> tuple[list[Annotation], list[str], list[int]]:
    with Session(eng) as s:
        anns = list(s.exec(select(Annotation).where(Annotation.user_id == user.id)).all())
        events = [e.action for e in s.exec(select(AnnotationEvent).order_by(AnnotationEvent.id)).all()]
        leases = [a.id for a in s.exec(select(Assignment).where(Assignment.status == "leased")).all()]
        assert replay_events(s) == stored_state(s)
    return anns, events, leases  # type: ignore[return-value]


@pytest.mark.postgres
def test_a_submit_whose_commit_went_in_unheard_is_not_reported_as_a_lost_lease(
    cut_engine: tuple[sa.Engine, CuttingProxy],
) -> None:
    """The COMMIT of submit + next reaches the server and the connection drops before the
    answer. The retry must find the label stored and go on to the item already claimed,
    instead of telling the reviewer their lease ended (or writing the label twice)."""
    eng, proxy = cut_engine
    cid, user = _one_item_each(eng)
    first = next_item(eng, user, QueueFilter(cid))
    assert first is not None
    proxy.cut_at(b"COMMIT", after_reply=True)
    ann, nxt = submit_and_next(eng, user, first.id, VLSU_SAFE, QueueFilter(cid), rationale="fine")  # type: ignore[arg-type]
    assert proxy.cuts == 1
    assert ann.labels == VLSU_SAFE and ann.rationale == "fine" and ann.item_id == first.item_id
    assert nxt is not None and nxt.item_id != first.item_id
    anns, events, leases = _stored(eng, user)
    assert [(a.item_id, a.labels, a.version) for a in anns] == [(first.item_id, VLSU_SAFE, 1)]
    assert events == ["create"] and leases == [nxt.id]  # the lease the unheard commit claimed

    # the reveal of a blind item: the same, for finalize + next
    unsafe = {**VLSU_SAFE, "joint": "unsafe"}
    with session_scope(eng) as s:
        second = submit(s, user, nxt.id, VLSU_SAFE)
    proxy.cut_at(b"COMMIT", after_reply=True)
    fin, last = finalize_and_next(
        eng,
        user,
        second.id,
        unsafe,
        QueueFilter(cid),
        expected_version=1,
        action="override",
        reveal_reason="the caption",
    )  # type: ignore[arg-type]
    assert proxy.cuts == 2
    assert fin.version == 2 and fin.labels == unsafe and fin.blind_labels == VLSU_SAFE
    assert last is not None and last.item_id not in (first.item_id, nxt.item_id)
    anns, events, leases = _stored(eng, user)
    assert events == ["create", "create", "reveal"] and leases == [last.id]


@pytest.mark.postgres
def test_a_submit_cut_before_the_server_saw_it_is_written_by_the_retry(
    cut_engine: tuple[sa.Engine, CuttingProxy],
) -> None:
    """The connection drops while the submit's statement is on its way: nothing of that
    transaction is stored, so the retry writes the label itself, once."""
    eng, proxy = cut_engine
    cid, user = _one_item_each(eng)
    first = next_item(eng, user, QueueFilter(cid))
    assert first is not None
    proxy.cut_at(b"INSERT INTO annotation", after_reply=False)
    ann, nxt = submit_and_next(eng, user, first.id, VLSU_SAFE, QueueFilter(cid))  # type: ignore[arg-type]
    assert proxy.cuts == 1
    assert ann.item_id == first.item_id and nxt is not None
    anns, events, leases = _stored(eng, user)
    assert [(a.item_id, a.version) for a in anns] == [(first.item_id, 1)]
    assert events == ["create"] and leases == [nxt.id]


@pytest.mark.postgres
def test_a_different_label_already_stored_is_still_a_conflict(cut_engine: tuple[sa.Engine, CuttingProxy]) -> None:
    """After an unheard commit, the retry accepts only the very write it was making: a stored
    label that differs (a second tab's, say) still surfaces as a conflict, and stays as it was."""
    eng, proxy = cut_engine
    cid, user = _one_item_each(eng)
    first = next_item(eng, user, QueueFilter(cid))
    assert first is not None
    calls = {"n": 0}

    def second_tab_wins(session: Session) -> Annotation:  # the first attempt commits label A, unheard
        calls["n"] += 1
        return submit(session, user, first.id, VLSU_SAFE if calls["n"] == 1 else {**VLSU_SAFE, "joint": "unsafe"})

    proxy.cut_at(b"COMMIT", after_reply=True)
    with pytest.raises(Conflict):
        ann_mod._then_next(
            eng,
            user,
            QueueFilter(cid),
            random.Random(0),
            second_tab_wins,
            lambda s: ann_mod.stored_submit(s, user, first.id, {**VLSU_SAFE, "joint": "unsafe"}),
        )
    assert proxy.cuts == 1 and calls["n"] == 2
    anns, events, _leases = _stored(eng, user)
    assert [a.labels for a in anns] == [VLSU_SAFE] and events == ["create"]


def test_the_stored_write_a_retry_accepts_matches_every_value_the_call_gave(engine: sa.Engine) -> None:
    """``stored_submit``/``stored_finalize`` take a stored annotation for the retried write only
    when it holds what that call asked for; a second tab's finalize with the same labels but
    another rationale or action is not it."""
    cid, user = _one_item_each(engine)
    lease = next_item(engine, user, QueueFilter(cid))
    assert lease is not None
    with session_scope(engine) as s:
        ann = submit(s, user, lease.id, VLSU_SAFE, rationale="first look")
    unsafe = {**VLSU_SAFE, "joint": "unsafe"}
    with session_scope(engine) as s:
        assert ann_mod.stored_submit(s, user, lease.id, VLSU_SAFE, rationale="first look") is not None
        assert ann_mod.stored_submit(s, user, lease.id, VLSU_SAFE, rationale="other") is None
        assert ann_mod.stored_submit(s, user, lease.id, unsafe, rationale="first look") is None
        assert ann_mod.stored_finalize(s, user, ann.id, unsafe, expected_version=1) is None  # not revealed yet
        ann_mod.finalize(
            s, user, ann.id, unsafe, expected_version=1, action="override", rationale="the caption", reveal_reason="r"
        )
    with session_scope(engine) as s:
        same = {"expected_version": 1, "action": "override", "rationale": "the caption"}
        assert ann_mod.stored_finalize(s, user, ann.id, unsafe, **same) is not None
        assert ann_mod.stored_finalize(s, user, ann.id, unsafe, **{**same, "rationale": "another tab"}) is None
        assert ann_mod.stored_finalize(s, user, ann.id, unsafe, **{**same, "action": "confirm"}) is None
        assert ann_mod.stored_finalize(s, user, ann.id, VLSU_SAFE, **same) is None
        assert ann_mod.stored_finalize(s, user, ann.id, unsafe, **{**same, "expected_version": 2}) is None


@pytest.mark.postgres
def test_an_edit_whose_commit_went_in_unheard_is_not_reported_as_a_conflict(
    cut_engine: tuple[sa.Engine, CuttingProxy],
) -> None:
    """My history's edit: its COMMIT reaches the server, the answer is lost. The retry finds
    its own edit stored (one version up, this user's update) and returns it, instead of
    telling the person the annotation changed since they opened it."""
    eng, proxy = cut_engine
    cid, user = _one_item_each(eng)
    lease = next_item(eng, user, QueueFilter(cid))
    assert lease is not None
    with session_scope(eng) as s:
        ann = submit(s, user, lease.id, VLSU_SAFE)
    unsafe = {**VLSU_SAFE, "joint": "unsafe"}
    proxy.cut_at(b"COMMIT", after_reply=True)
    edited = ann_mod.edit(eng, user, ann.id, 1, labels=unsafe, rationale="second look")  # type: ignore[arg-type]
    assert proxy.cuts == 1
    assert edited.version == 2 and edited.labels == unsafe and edited.rationale == "second look"
    anns, events, _leases = _stored(eng, user)
    assert [(a.version, a.labels) for a in anns] == [(2, unsafe)] and events == ["create", "update"]
    # cut before the server saw it: the retry makes the edit, once
    proxy.cut_at(b"UPDATE annotation", after_reply=False)
    again = ann_mod.edit(eng, user, ann.id, 2, labels=VLSU_SAFE)  # type: ignore[arg-type]
    assert proxy.cuts == 2 and again.version == 3
    _anns, events, _leases = _stored(eng, user)
    assert events == ["create", "update", "update"]
    # an edit made elsewhere is still a conflict
    with pytest.raises(Conflict):
        ann_mod.edit(eng, user, ann.id, 2, labels=unsafe)  # type: ignore[arg-type]


def test_the_stored_edit_a_retry_accepts_matches_the_call(engine: sa.Engine) -> None:
    cid, user = _one_item_each(engine)
    lease = next_item(engine, user, QueueFilter(cid))
    assert lease is not None
    with session_scope(engine) as s:
        ann = submit(s, user, lease.id, VLSU_SAFE)
    unsafe = {**VLSU_SAFE, "joint": "unsafe"}
    with session_scope(engine) as s:
        assert ann_mod.stored_update(s, user, ann.id, 1, labels=unsafe) is None  # nothing edited yet
    edited = ann_mod.edit(engine, user, ann.id, 1, labels=unsafe, flagged=True)
    assert edited.version == 2
    with session_scope(engine) as s:
        assert ann_mod.stored_update(s, user, ann.id, 1, labels=unsafe, flagged=True) is not None
        assert ann_mod.stored_update(s, user, ann.id, 1, labels=unsafe) is not None  # flag not given: not compared
        assert ann_mod.stored_update(s, user, ann.id, 1, labels=unsafe, flagged=False) is None
        assert ann_mod.stored_update(s, user, ann.id, 1, labels=VLSU_SAFE) is None
        assert ann_mod.stored_update(s, user, ann.id, 2, labels=unsafe) is None

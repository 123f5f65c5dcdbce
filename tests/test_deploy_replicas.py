"""A replica lost mid-shift: three PostgreSQL-backed replicas behind Debian's nginx, 20
annotators, one replica SIGKILLed.

The deployment is the shipped one: ``safereview init`` first, then each replica started by
the ``ExecStart`` of ``deploy/safereview@.service`` with the variables of
``deploy/safereview.env`` (leases shortened to 15 s with ``SAFEREVIEW_LEASE_MINUTES``), and
nginx on the site ``safereview.deploy`` renders, under the URL path ``/review``
(``SAFEREVIEW_BASE_URL_PATH``). Twenty annotators, each from an address of its own, drive
the app through the proxy over its websocket (``bench/fleet.py``: sign in, label, submit,
think time). Once every one has submitted, the replica serving the most of them is
SIGKILLed. A third of its annotators walk away at that moment; the others reconnect
through the proxy as Streamlit's frontend does, land on a live replica, are signed in again
from their session cookie (sessions are in the database) and carry on, with the item that
was on their screen still theirs.

At the end: every label an annotator saw stored is in the database, once, with the labels
pressed, and nothing else is (a Submit whose answer died with the replica is resolved by
what the reconnect shows); no item has two annotations; the event log replays to the
annotation table; slots, leases and foreign keys agree; the annotators of the other replicas
never noticed; and the leases held by those who walked away returned to the pool within the
lease time and were taken by others.

Skips without PostgreSQL (``SAFEREVIEW_TEST_PG``) or nginx; fails instead under
``SAFEREVIEW_REQUIRE_PG=1`` / ``SAFEREVIEW_REQUIRE_NGINX=1`` (CI). About 1.5 minutes on two cores.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import deploy_support as D
import hardening_support as H
import pytest
import sqlalchemy as sa

from safereview import deploy

fleet = D.fleet
sys.path.insert(0, str(D.REPO / "bench"))

import bench_app  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.nginx, pytest.mark.timeout(600)]

N_ANNOTATORS = 20
N_ITEMS = 3000
THINK_S = 0.5  # mean pause before each press (exponential)
LEASE_MINUTES = 0.25  # SAFEREVIEW_LEASE_MINUTES: 15 s
RECLAIM_EVERY_S = 5.0  # workflow.queue.RECLAIM_EVERY: expired leases are reclaimed lazily, at pulls
BASE_PATH = "review"


def _leases(engine: sa.Engine, usernames: list[str]) -> list[tuple[int, str, str, object, int]]:
    """(assignment id, username, status, lease expiry, item id) of the users' assignments."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                'SELECT a.id, u.username, a.status, a.lease_expires_at, a.item_id FROM assignment a JOIN "user" u '
                "ON u.id = a.user_id WHERE u.username IN :names"
            ).bindparams(sa.bindparam("names", expanding=True)),
            {"names": usernames},
        ).all()
    return [(int(r[0]), str(r[1]), str(r[2]), r[3], int(r[4])) for r in rows]


def test_a_replica_lost_mid_shift(pg_url: str, tmp_path: Path) -> None:
    binary = D.nginx_or_skip()
    t_start = time.monotonic()
    bench_app.build_db(pg_url, N_ITEMS, N_ANNOTATORS)  # items, two verdicts each, overlap 1; bench00..bench19
    env = D.replica_env(pg_url, tmp_path / "media", SAFEREVIEW_LEASE_MINUTES=str(LEASE_MINUTES))
    env["SAFEREVIEW_BASE_URL_PATH"] = BASE_PATH
    init = subprocess.run(
        [f"{sys.prefix}/bin/safereview", "init"], env={**os.environ, **env}, capture_output=True, text=True
    )
    assert init.returncode == 0 and "database ready at schema revision" in init.stdout, init.stdout + init.stderr

    replicas = [fleet.Replica(env, tmp_path) for _ in range(3)]
    proxy: fleet.Proxy | None = None
    engine = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        for r in replicas:
            r.start()
        for r in replicas:
            r.wait_ready()
        site = deploy.Site(
            replicas=tuple(r.addr for r in replicas),
            listen=f"127.0.0.1:{fleet.free_port()}",
            server_name="127.0.0.1",
            base_url_path=BASE_PATH,
            access_log="logs/safereview.access.log",
        )
        proxy = fleet.Proxy(site, tmp_path / "nginx", binary)
        checked = proxy.test()
        assert checked.returncode == 0, checked.stderr
        proxy.start()
        base = f"http://{site.listen}/{BASE_PATH}"
        t_ready = time.monotonic()
        dims = fleet.uni_safebench_dims()
        annotators = [
            fleet.Annotator(
                base,
                f"bench{u:02d}",
                bench_app.PASSWORD,
                dims,
                THINK_S,
                random.Random(1000 + u),
                local_address=f"127.0.0.{20 + u}",
            )
            for u in range(N_ANNOTATORS)
        ]
        report = asyncio.run(_shift(annotators, replicas, proxy, engine))
    finally:
        if proxy is not None:
            proxy.stop()
        for r in replicas:
            r.stop()
    t_end = time.monotonic()

    victim, on_victim, leavers, held, released_at = (
        report["victim"],
        report["on_victim"],
        report["leavers"],
        report["held"],
        report["released_at"],
    )
    by_name = {a.username: a for a in annotators}
    problems = [f"{a.username}: {a.error}" for a in annotators if a.error]
    assert not problems, problems
    assert all(a.throttled == 0 for a in annotators)  # each from its own address: no sign-in waits

    # the other replicas' annotators never noticed
    for a in annotators:
        if a.username not in on_victim:
            assert a.drops == 0 and a.reconnects == [], (a.username, a.drops)
    # the dead replica's annotators: the leavers left, the others reconnected through nginx and went on
    stayers = [by_name[n] for n in on_victim if n not in leavers]
    assert len(on_victim) >= 2 and leavers and stayers, (on_victim, leavers)
    for a in stayers:
        assert a.drops >= 1 and a.reconnects, a.username
        assert a.items_after_reconnect >= 1, (a.username, a.submits[-3:])
        assert a.cookie_sign_ins + a.password_sign_ins >= 2  # signed in on the new replica
        stored_after = {s.item for s in a.submits if s.outcome == "stored-after-reconnect"}
        # the item on screen at the drop came back (still their lease) unless its Submit had been stored
        assert a.first_item_after_reconnect == a.last_item_before_drop or a.last_item_before_drop in stored_after
    for name in leavers:
        assert by_name[name].left

    # every label an annotator saw stored is in the database once, and nothing else is
    db = fleet.stored_labels(pg_url)  # raises on two annotations of one (user, item)
    believed = {(a.username, item): labels for a in annotators for item, labels in a.stored.items()}
    maybe = {(s.username, s.item): s.labels for a in annotators for s in a.in_doubt}  # leavers' last submit
    assert all(a.username in leavers for a in annotators if a.in_doubt)
    lost = {k: v for k, v in believed.items() if db.get(k) != v}
    extra = {k: v for k, v in db.items() if k not in believed and maybe.get(k) != v}
    assert not lost and not extra, (lost, extra)
    items = Counter(item for _user, item in db)
    assert max(items.values()) == 1  # overlap 1: no item reviewed twice
    assert H.consistency_problems(engine) == []  # foreign keys, slots = leased + done, event log replays

    # the leavers' leases went back to the pool within the lease time, and others took the items
    assert held, "the leavers held no lease at the kill"
    lease_s = LEASE_MINUTES * 60
    for aid, _user, _status, expires, item_id in held:
        seen = released_at[aid]
        assert seen is not None, f"lease {aid} still held"
        assert seen <= expires + timedelta(seconds=RECLAIM_EVERY_S + 3), (aid, seen, expires)
        assert expires <= report["killed_at_utc"] + timedelta(seconds=lease_s)
        taken = [r for r in _leases(engine, list(by_name)) if r[4] == item_id and r[1] not in leavers]
        assert taken, f"item {item_id} was not taken again"
    engine.dispose()

    before, after = report["before"], report["after"]
    outcomes = Counter(s.outcome for a in annotators for s in a.submits)
    print(
        f"\n{N_ANNOTATORS} annotators, 3 replicas behind nginx, PostgreSQL; killed {victim} "
        f"({len(on_victim)} annotators: {len(leavers)} left, {len(stayers)} reconnected in "
        f"{max(x for a in stayers for x in a.reconnects):.2f} s at most)\n"
        f"submits/s before {before['rate']:.1f}, after {after['rate']:.1f}; submit → next p50 "
        f"{before['p50']:.0f} / {after['p50']:.0f} ms, p95 {before['p95']:.0f} / {after['p95']:.0f} ms; "
        f"{len(db)} labels, {len(held)} leases returned; submits {dict(outcomes)}; set-up {t_ready - t_start:.0f} s, "
        f"total {t_end - t_start:.0f} s; load average {fleet.loadavg()}"
    )


async def _shift(
    annotators: list[fleet.Annotator], replicas: list[fleet.Replica], proxy: fleet.Proxy, engine: sa.Engine
) -> dict:
    from safereview.db.models import utcnow

    far = time.monotonic() + 400
    tasks = [asyncio.create_task(a.run(far, start_delay=0.15 * i)) for i, a in enumerate(annotators)]

    deadline = time.monotonic() + 150  # everybody signed in and labelling before the kill
    while any(len(a.stored) < 2 and not a.error for a in annotators):
        assert time.monotonic() < deadline, [(a.username, len(a.stored), a.error) for a in annotators]
        await asyncio.sleep(0.5)
    assert not [a.error for a in annotators if a.error]
    where = await fleet.probe_replicas(annotators, proxy)
    assert len(where) == len(annotators), where
    victim_addr = Counter(where.values()).most_common(1)[0][0]
    victim = next(r for r in replicas if r.addr == victim_addr)
    on_victim = [a.username for a in annotators if where[a.username] == victim_addr]
    leavers = on_victim[: max(1, len(on_victim) // 3)]
    for a in annotators:
        a.leave_on_disconnect = a.username in leavers

    t_kill = time.monotonic()
    killed_at_utc = utcnow()
    victim.kill()
    await asyncio.sleep(1.0)  # PostgreSQL has rolled back the dead replica's open transactions
    held = [row for row in _leases(engine, leavers) if row[2] == "leased"]
    released_at: dict[int, object] = {row[0]: None for row in held}
    stayers = [a for a in annotators if a.username in on_victim and a.username not in leavers]
    items = {row[4] for row in held}
    stop = t_kill + LEASE_MINUTES * 60 + RECLAIM_EVERY_S + 10
    while time.monotonic() < stop:
        now = utcnow()
        for aid, _u, status, _exp, _item in _leases(engine, leavers):
            if aid in released_at and released_at[aid] is None and status != "leased":
                released_at[aid] = now
        retaken = {row[4] for row in _leases(engine, [a.username for a in annotators if a.username not in leavers])}
        if all(released_at.values()) and items <= retaken and all(a.items_after_reconnect for a in stayers):
            break  # everything the test waits for has happened: end the shift early
        await asyncio.sleep(0.5)
    stop_at = time.monotonic()
    for a in annotators:  # the end of the shift: each finishes the press in hand
        a.stop()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)

    def window(lo: float, hi: float) -> dict[str, float]:
        done = [s for a in annotators for s in a.submits if s.seconds is not None and lo <= s.sent < hi]
        ms = [s.seconds * 1000 for s in done if s.seconds is not None]
        return {
            "rate": len(done) / max(hi - lo, 1e-9),
            "p50": fleet.percentile(ms, 0.5),
            "p95": fleet.percentile(ms, 0.95),
        }

    first = min((s.sent for a in annotators for s in a.submits), default=t_kill)
    return {
        "victim": victim_addr,
        "on_victim": on_victim,
        "leavers": leavers,
        "held": held,
        "released_at": released_at,
        "killed_at_utc": killed_at_utc,
        "before": window(first, t_kill),
        "after": window(t_kill, stop_at),
    }

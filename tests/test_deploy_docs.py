"""The commands of docs/deploy.md, run as written.

Each command is a template: filled with the page's own values it must appear in
docs/deploy.md word for word; filled with this test's values (a temporary folder for
``/etc/safereview``, ``/srv/safereview`` and ``/var/backups/safereview``, fresh PostgreSQL
databases for ``safereview`` and ``safereview_restored``, this virtualenv for
``/opt/safereview/.venv``) it runs in a shell. ``sudo -u postgres`` and ``sudo -u
safereview`` are dropped: the test's PostgreSQL role (``PGUSER``) owns everything. What
cannot run here (apt-get, useradd, systemctl) is listed at the end of the page.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import deploy_support as D
import pytest
import sqlalchemy as sa

from safereview import deploy

fleet = D.fleet
PAGE = (D.REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
PG_URL = os.environ.get("SAFEREVIEW_TEST_PG", "")

DOC = {
    "venv": "/opt/safereview/.venv",
    "etc": "/etc/safereview",
    "srv": "/srv/safereview",
    "backups": "/var/backups/safereview",
    "db": "safereview",
    "restored": "safereview_restored",
    "owner": "safereview",
    "restored_url": "postgresql+psycopg://safereview@/safereview_restored",
    "port": "8501",
    "conf": "/etc/nginx/conf.d/safereview.conf",
}
RUN_AS = "sudo -u safereview sh -c 'set -a; . {etc}/safereview.env; exec {venv}/bin/safereview"
COMMANDS = {
    "env": "{venv}/bin/python -m safereview.deploy env > {etc}/safereview.env",
    "init": RUN_AS + " init'",
    "admin": 'echo "a long passphrase for Ada" | ' + RUN_AS + " users add ada --role admin --password-stdin'",
    "health": "curl -fsS http://127.0.0.1:{port}/healthz",
    "nginx": "{venv}/bin/python -m safereview.deploy nginx --server-name review.example.org "
    "--replica 127.0.0.1:8501 --replica 127.0.0.1:8502 --replica 127.0.0.1:8503 > {conf}",
    "dump": "sudo -u postgres pg_dump --format=custom --file={backups}/safereview-$(date +%F).dump {db}",
    "tar": "tar -C {srv} -czf {backups}/media-$(date +%F).tar.gz media",
    "createdb": "sudo -u postgres createdb --owner={owner} {restored}",
    "restore": "sudo -u postgres pg_restore --dbname={restored} {backups}/safereview-$(date +%F).dump",
    "mkdir": "mkdir -p {srv}-restored",
    "untar": "tar -C {srv}-restored -xzf {backups}/media-$(date +%F).tar.gz",
    "init_restored": "SAFEREVIEW_DB={restored_url} {venv}/bin/safereview init --media-root {srv}-restored/media",
}


def test_every_command_is_on_the_page_as_written() -> None:
    missing = [name for name, cmd in COMMANDS.items() if cmd.format(**DOC) not in PAGE]
    assert not missing, [COMMANDS[m].format(**DOC) for m in missing]


def _run(name: str, values: dict[str, str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = COMMANDS[name].format(**values).replace("sudo -u postgres ", "").replace("sudo -u safereview ", "")
    r = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, f"{cmd}\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture
def databases() -> Iterator[tuple[str, str, dict[str, str]]]:
    """Two fresh PostgreSQL databases (the page's ``safereview`` and ``safereview_restored``)
    and the libpq environment that reaches the server."""
    if not PG_URL:
        pytest.skip("SAFEREVIEW_TEST_PG not set")
    from safereview.db.engine import normalise_url

    url = sa.engine.make_url(normalise_url(PG_URL))
    names = (f"sr_docs_{uuid.uuid4().hex[:8]}", f"sr_docs_{uuid.uuid4().hex[:8]}_restored")
    libpq = {
        "PGHOST": url.host or "127.0.0.1",
        "PGPORT": str(url.port or 5432),
        "PGUSER": url.username or "postgres",
        **({"PGPASSWORD": url.password} if url.password else {}),
    }
    admin = sa.create_engine(normalise_url(PG_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {names[0]}")
    try:
        yield names[0], names[1], libpq
    finally:
        with admin.connect() as conn:
            for name in names:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


def _app_url(libpq: dict[str, str], db: str) -> str:
    auth = libpq["PGUSER"] + (f":{libpq['PGPASSWORD']}" if "PGPASSWORD" in libpq else "")
    return f"postgresql+psycopg://{auth}@{libpq['PGHOST']}:{libpq['PGPORT']}/{db}"


@pytest.mark.postgres
@pytest.mark.slow
def test_install_serve_back_up_and_restore_as_the_page_says(
    databases: tuple[str, str, dict[str, str]], tmp_path: Path
) -> None:
    db, restored, libpq = databases
    values = {
        "venv": sys.prefix,
        "etc": str(tmp_path / "etc"),
        "srv": str(tmp_path / "srv"),
        "backups": str(tmp_path / "backups"),
        "db": db,
        "restored": restored,
        "owner": libpq["PGUSER"],
        "restored_url": _app_url(libpq, restored),
        "port": "",
        "conf": str(tmp_path / "nginx" / "safereview.conf"),
    }
    for folder in ("etc", "srv", "backups"):
        Path(values[folder]).mkdir(parents=True)
    env = {**os.environ, **libpq, "COLUMNS": "500"}  # rich wraps long paths mid-word at 80 columns
    for var in [k for k in env if k.startswith("SAFEREVIEW_")]:
        del env[var]  # only the environment file speaks

    # the environment file, edited as the page says (the database and the media root)
    _run("env", values, env)
    env_file = Path(values["etc"]) / "safereview.env"
    text = env_file.read_text(encoding="utf-8")
    assert text == deploy.env_file()
    media = Path(values["srv"]) / "media"
    text = text.replace(f"SAFEREVIEW_DB={deploy.Env.db_url}", f"SAFEREVIEW_DB={_app_url(libpq, db)}")
    text = text.replace(f"SAFEREVIEW_MEDIA_ROOT={deploy.Env.media_root}", f"SAFEREVIEW_MEDIA_ROOT={media}")
    env_file.write_text(text, encoding="utf-8")

    r = _run("init", values, env)
    said = " ".join(r.stdout.split())  # rich wraps long lines
    assert "database ready at schema revision" in said and f"media root: {media}" in said, said
    _run("admin", values, env)

    # some work to back up: a review shift's labels (with their event log) and a media file
    sys.path.insert(0, str(D.REPO / "bench"))
    import bench_app

    settings = deploy.read_env_file(text)
    bench_app.build_db(settings["SAFEREVIEW_DB"], 50, 2)
    _label(settings["SAFEREVIEW_DB"], 5)
    (media / "ab" / "cd").mkdir(parents=True, exist_ok=True)
    (media / "ab" / "cd" / ("ab" + "cd" + "0" * 60 + ".png")).write_bytes(b"stand-in for an imported image")

    # a replica started as the unit starts it answers the page's health check
    replica = fleet.Replica({**settings, "SAFEREVIEW_CACHE_DIR": str(tmp_path / "derived")}, tmp_path).start()
    try:
        replica.wait_ready()
        r = _run("health", {**values, "port": str(replica.port)}, env)
    finally:
        replica.stop()
    assert '"database":"ok"' in r.stdout.replace(" ", ""), r.stdout

    # back up, restore into a new database and folder, check the copy
    for step in ("dump", "tar", "createdb", "restore", "mkdir", "untar"):
        _run(step, values, env)
    restored_media = Path(values["srv"] + "-restored") / "media"
    assert sorted(p.relative_to(restored_media) for p in restored_media.rglob("*.png")) == sorted(
        p.relative_to(media) for p in media.rglob("*.png")
    )
    r = _run("init_restored", values, env)
    from safereview.db.engine import head_revision

    assert f"schema revision {head_revision()}" in r.stdout, r.stdout
    said = " ".join(r.stdout.split())  # rich wraps long lines
    assert f"media root: {restored_media}" in said, said  # the copy records its own media folder
    assert _snapshot(settings["SAFEREVIEW_DB"]) == _snapshot(values["restored_url"])
    engine = sa.create_engine(values["restored_url"])
    try:
        import hardening_support as H

        assert H.replay_problems(engine) == []  # the restored event log replays to the restored labels
    finally:
        engine.dispose()


def _label(db_url: str, n: int) -> None:
    """``n`` items labelled through the queue by the benchmark's first annotator."""
    from sqlmodel import select

    from safereview.db.engine import make_engine, session_scope
    from safereview.db.models import Collection, User
    from safereview.workflow import annotations, queue

    engine = make_engine(db_url)
    try:
        with session_scope(engine) as s:
            user = s.exec(select(User).where(User.username == "bench00")).one()
            cid = s.exec(select(Collection.id)).first()
            s.expunge(user)
        for _ in range(n):
            lease = queue.next_item(engine, user, queue.QueueFilter(int(cid)))  # type: ignore[arg-type]
            assert lease is not None
            with session_scope(engine) as s:
                annotations.submit(s, user, lease.id, {"contextual": "safe", "intrinsic": "safe"})  # type: ignore[arg-type]
    finally:
        engine.dispose()


def _snapshot(db_url: str) -> dict[str, list[tuple]]:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            return {
                table: [tuple(r) for r in conn.execute(sa.text(f'SELECT * FROM "{table}" ORDER BY 1'))]
                for table in ("user", "item", "annotation", "annotationevent", "assignment", "alembic_version")
            }
    finally:
        engine.dispose()


@pytest.mark.nginx
def test_the_nginx_command_renders_the_shipped_site_and_nginx_takes_it(tmp_path: Path) -> None:
    binary = D.nginx_or_skip()
    values = {**DOC, "venv": sys.prefix, "conf": str(tmp_path / "nginx" / "safereview.conf")}
    (tmp_path / "nginx").mkdir()
    _run("nginx", values, dict(os.environ))
    site = Path(values["conf"]).read_text(encoding="utf-8")
    assert site == (D.REPO / "deploy" / "nginx.conf").read_text(encoding="utf-8")  # the shipped file
    log = str(tmp_path / "nginx-t" / "logs" / "access.log")  # nginx -t opens it: not in /var/log here
    proxy = fleet.Proxy(deploy.Site(access_log=log), tmp_path / "nginx-t", binary)
    assert proxy.site_conf.read_text(encoding="utf-8") == site.replace(deploy.Site.access_log, log)
    r = proxy.test()
    assert r.returncode == 0 and "test is successful" in r.stderr, r.stderr

"""``safereview serve`` and ``safereview demo``: run the review app.

Streamlit is started as ``streamlit run review_app/asgi.py`` in place of this process
(``exec``), so signals and exit codes are Streamlit's own; settings travel by environment
variables, which is how the app reads them (``review_app/runtime.py``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from safereview.cli.common import DbOption, MediaRootOption, config, console, engine_for

HostOption = Annotated[str, typer.Option("--host", help="Address to listen on (127.0.0.1 keeps it local).")]
PortOption = Annotated[int, typer.Option("--port", help="TCP port to listen on.")]
GcOption = Annotated[
    str,
    typer.Option(
        "--gc",
        help="Garbage collection after each script run: 'off' (default: no full "
        "collection after every run; Python's own generational GC still runs), 'freeze' "
        "(freeze the start-up heap, keep the post-run collection) or 'full' (Streamlit's "
        "default). See docs/review_app.md for the measurements.",
    ),
]

# Demo accounts: fixed passwords are acceptable ONLY for the local demo database.
DEMO_USERS: tuple[tuple[str, str, str, str], ...] = (
    ("admin", "admin-demo-2026", "admin", "Demo Admin"),
    ("lead", "lead-demo-2026", "lead", "Demo Lead"),
    ("alice", "alice-demo-2026", "annotator", "Alice"),
    ("bob", "bob-demo-2026", "annotator", "Bob"),
)


def _absolute_db_url(url: str) -> str:
    from safereview.db.urls import sqlite_path

    path = sqlite_path(url)
    if path is None:
        return url
    query = url.split("?", 1)[1] if "?" in url else ""
    return f"sqlite:///{path}" + (f"?{query}" if query else "")


def streamlit_command(
    host: str, port: int, *, gc: str = "off", max_upload_mb: int = 200, base_url_path: str = ""
) -> list[str]:
    """The ``streamlit run`` command line ``serve`` executes (exposed for tests and the bench)."""
    if gc not in ("freeze", "off", "full"):
        raise typer.BadParameter("--gc must be freeze, off or full")
    asgi = importlib.util.find_spec("safereview.review_app.asgi").origin  # the installed file, wherever it is
    return [
        sys.executable,
        "-m",
        "safereview.review_app.launch",  # Streamlit's CLI, with TCP_NODELAY on accepted connections
        "run",
        str(asgi),
        "--server.headless",
        "true",
        "--global.developmentMode",
        "false",
        "--server.fileWatcherType",
        "none",
        "--server.runOnSave",
        "false",
        "--client.toolbarMode",
        "minimal",
        "--client.showErrorDetails",
        "type",
        "--browser.gatherUsageStats",
        "false",
        "--server.enableStaticServing",
        "false",
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.maxUploadSize",
        str(max_upload_mb),
        "--server.baseUrlPath",
        base_url_path,
        "--runner.magicEnabled",
        "false",
        "--runner.postScriptGC",
        "false" if gc == "off" else "true",
    ]


def serve_env(db_url: str, media_root: Path, cache_dir: Path | None = None, *, gc: str = "off") -> dict[str, str]:
    env = dict(os.environ)
    env["SAFEREVIEW_DB"] = _absolute_db_url(db_url)
    env["SAFEREVIEW_MEDIA_ROOT"] = str(Path(media_root).resolve())
    if cache_dir is not None:
        env["SAFEREVIEW_CACHE_DIR"] = str(Path(cache_dir).resolve())
    env["SAFEREVIEW_APP_GC_FREEZE"] = "1" if gc == "freeze" else "0"
    env["FORWARDED_ALLOW_IPS"] = forwarded_allow_ips()
    return env


def forwarded_allow_ips() -> str:
    """Whose ``X-Forwarded-For``/``-Proto`` uvicorn (Streamlit's server) believes: exactly
    ``SAFEREVIEW_TRUSTED_PROXIES``, nobody by default.

    Uvicorn's own default trusts 127.0.0.1 and ::1, so any local process talking to the app
    directly could name its own address for the sign-in limits; behind a trusted proxy it
    rewrites the client address and scheme (``https`` marks the cookies ``Secure``).
    """
    from safereview.settings import Config

    trusted = list(Config().trusted_proxies)
    if {"127.0.0.1", "::1", "local"} & set(trusted):  # as the app's own check: loopback is one address
        trusted += ["127.0.0.1", "::1"]
    return ",".join(dict.fromkeys(t for t in trusted if t != "local"))


def _exec_streamlit(cfg, host: str, port: int, gc: str) -> None:  # type: ignore[no-untyped-def]
    cmd = streamlit_command(host, port, gc=gc, max_upload_mb=cfg.max_upload_mb, base_url_path=cfg.base_url_path)
    env = serve_env(cfg.db_url, cfg.media_root, Path(cfg.cache_dir_override) if cfg.cache_dir_override else None, gc=gc)
    console.print(f"serving the review app on http://{host}:{port}{cfg.url_prefix}/  (Ctrl+C stops)")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(cmd[0], cmd, env)


def ensure_demo_users(db_url: str) -> list[tuple[str, str, str]]:
    """Create the demo accounts that are missing; returns (username, password, role) of all."""
    from sqlmodel import select

    from safereview.dataio.demo import DEMO_PRINCIPAL
    from safereview.db.engine import make_engine, session_scope
    from safereview.db.models import User
    from safereview.workflow import auth

    engine = make_engine(db_url)
    try:
        with session_scope(engine) as s:
            for username, password, role, display in DEMO_USERS:
                if s.exec(select(User).where(User.username == username)).first() is None:
                    auth.create_user(s, username, password, role, display_name=display, actor=DEMO_PRINCIPAL)
    finally:
        engine.dispose()
    return [(u, p, r) for u, p, r, _ in DEMO_USERS]


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        db: DbOption = None,
        media_root: MediaRootOption = None,
        host: HostOption = "127.0.0.1",
        port: PortOption = 8501,
        gc: GcOption = "off",
    ) -> None:
        """Run the review app (Streamlit) against a database; upgrades the schema first."""
        from safereview.db.deployment import media_root as db_media_root

        cfg = config(db, media_root)
        engine = engine_for(cfg)
        try:
            root = db_media_root(cfg, engine)  # the database's own media root unless one is given
        finally:
            engine.dispose()
        _exec_streamlit(config(cfg.db_url, str(root)), host, port, gc)

    @app.command("demo")
    def demo(
        directory: Annotated[Path, typer.Option("--dir", help="Folder for the demo database and media.")] = Path(
            ".demo"
        ),
        host: HostOption = "127.0.0.1",
        port: PortOption = 8501,
        no_serve: Annotated[
            bool, typer.Option("--no-serve", help="Build the demo and print the sign-ins, but do not start the app.")
        ] = False,
    ) -> None:
        """Build (idempotently) a demo database with demo users, print the sign-ins, then serve."""
        from safereview.dataio.demo import DB_NAME, DemoError, build_demo_folder

        directory = directory.resolve()
        try:
            build_demo_folder(directory, finish=ensure_demo_users)
        except DemoError as exc:
            console.print(f"the demo was not built: {exc}", style="red", highlight=False)
            raise typer.Exit(1) from None
        cfg = config(f"sqlite:///{directory / DB_NAME}", str(directory / "media"))
        users = [(u, p, r) for u, p, r, _ in DEMO_USERS]
        console.print(f"demo database: {directory / DB_NAME}")
        console.print("demo sign-ins (for this local demo only):")
        for username, password, role in users:
            console.print(f"  {role:<10} {username:<8} password: {password}")
        if not no_serve:
            _exec_streamlit(cfg, host, port, "off")

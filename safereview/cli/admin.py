"""``safereview init``: create or upgrade a database."""

from __future__ import annotations

import typer

from safereview.cli.common import DbOption, MediaRootOption, config, console


def register(app: typer.Typer) -> None:
    @app.command("init")
    def init(db: DbOption = None, media_root: MediaRootOption = None) -> None:
        """Create the database or upgrade its schema to the newest version (idempotent).

        Also records where the database's media live (--media-root, else the default
        beside the database), so every later command against it finds them.
        """
        from safereview.db.deployment import record_media_root
        from safereview.db.engine import init_db, schema_revision

        cfg = config(db, media_root)
        engine = init_db(cfg.db_url)
        root = record_media_root(engine, cfg.media_root, replace=bool(cfg.media_root_override))
        console.print(f"database ready at schema revision {schema_revision(engine)}: {engine.url!r}")
        console.print(f"media root: {root}", highlight=False)

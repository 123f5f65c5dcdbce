"""``safereview init``: create or upgrade a database."""

from __future__ import annotations

import typer

from safereview.cli.common import DbOption, config, console


def register(app: typer.Typer) -> None:
    @app.command("init")
    def init(db: DbOption = None) -> None:
        """Create the database or upgrade its schema to the newest version (idempotent)."""
        from safereview.db.engine import init_db, schema_revision

        cfg = config(db)
        engine = init_db(cfg.db_url)
        console.print(f"database ready at schema revision {schema_revision(engine)}: {engine.url!r}")

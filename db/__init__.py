"""Storage: SQLModel tables, engines and sessions, migrations, taxonomies."""

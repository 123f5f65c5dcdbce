"""``safereview import``, ``export``, ``collections`` and ``taxonomy``: data in and out.

Heavy modules (pyarrow, Pillow, PyAV, librosa) are imported inside the commands so that
``safereview --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from safereview.cli.common import DbOption, MediaRootOption, config, console, engine_for, principal
from safereview.wording import count

export_app = typer.Typer(
    help="Export items (with verdicts), annotations and gold labels to JSONL, CSV or Parquet.",
    no_args_is_help=True,
)
taxonomy_app = typer.Typer(help="Show or check taxonomies (presets or TOML/YAML files).", no_args_is_help=True)

CollectionsOpt = Annotated[
    list[str] | None,
    typer.Option("--collection", "-c", help="Only this collection (repeat for several; default: all)."),
]
FormatOpt = Annotated[
    str | None,
    typer.Option("--format", "-f", help="jsonl, csv or parquet (default: from the --out extension)."),
]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output file (written atomically).")]


RawCsvOpt = Annotated[
    bool,
    typer.Option(
        "--raw-csv",
        help="CSV: keep text cells that start with = + - @ as they are (for machine pipelines; a spreadsheet would "
        "run them as formulas).",
    ),
]


def _run_export(
    kind: str, out: Path, fmt: str | None, db: str | None, collections: list[str] | None, raw_csv: bool = False
) -> None:
    from safereview.dataio.export import export_annotations, export_items, format_from_path

    try:
        fmt_ = format_from_path(out, fmt)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if fmt_ not in ("jsonl", "csv", "parquet"):
        typer.echo(f"error: --format must be jsonl, csv or parquet, got {fmt_!r}", err=True)
        raise typer.Exit(2)
    cfg = config(db)
    engine = engine_for(cfg)
    try:
        fn = export_items if kind == "items" else export_annotations
        res = fn(engine, out, fmt_, collections=collections or None, raw_csv=raw_csv)
    except LookupError as exc:
        typer.echo(f"error: {exc.args[0] if exc.args else exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    console.print(f"wrote {res.rows} {kind} rows ({len(res.columns)} columns) to {res.path} [{res.format}]")


@export_app.command("items")
def export_items_cmd(
    out: OutOpt,
    fmt: FormatOpt = None,
    collection: CollectionsOpt = None,
    raw_csv: RawCsvOpt = False,
    db: DbOption = None,
) -> None:
    """Items with their judge verdicts: one row per item, columns verdict.<judge>.<dimension>[.prob|.status]."""
    _run_export("items", out, fmt, db, collection, raw_csv)


@export_app.command("annotations")
def export_annotations_cmd(
    out: OutOpt,
    fmt: FormatOpt = None,
    collection: CollectionsOpt = None,
    raw_csv: RawCsvOpt = False,
    db: DbOption = None,
) -> None:
    """Every annotation: one row per item and annotator, blind and final labels, action, time spent."""
    _run_export("annotations", out, fmt, db, collection, raw_csv)


@taxonomy_app.command("show")
def taxonomy_show(
    name: Annotated[str, typer.Argument(help="Preset name (uni-safebench, vlsu) or a TOML/YAML file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the validated spec as JSON.")] = False,
) -> None:
    """Print a taxonomy: task types, categories and dimensions with their labels."""
    import json

    from safereview.db.taxonomy import TaxonomyError, resolve

    try:
        spec = resolve(name)
    except TaxonomyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(spec, indent=2, ensure_ascii=False))
        return
    _print_taxonomy(spec)


@taxonomy_app.command("check")
def taxonomy_check(path: Annotated[Path, typer.Argument(help="Taxonomy file (.toml, .yaml or .yml).")]) -> None:
    """Validate a taxonomy file; errors name the file and the field."""
    from safereview.db.taxonomy import TaxonomyError, load_file

    try:
        spec = load_file(path)
    except TaxonomyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    console.print(
        f"{path}: ok: taxonomy {spec['name']!r} version {spec['version']}: "
        f"{len(spec['task_types'])} task types, {len(spec['categories'])} categories, "
        f"{len(spec['dimensions'])} dimensions"
    )


def _print_taxonomy(spec: dict) -> None:
    from rich.table import Table
    from rich.text import Text

    console.print(f"taxonomy {spec['name']} (version {spec['version']})", highlight=False)
    if spec.get("description"):
        console.print(spec["description"], highlight=False)
    t = Table(title="task types")
    for col in ("id", "name", "inputs", "outputs"):
        t.add_column(col)
    for tt in spec["task_types"]:
        t.add_row(Text(tt["id"]), Text(tt["name"]), "+".join(tt["inputs"]), "+".join(tt["outputs"]))
    console.print(t)
    c = Table(title="categories")
    c.add_column("id")
    c.add_column("name")
    c.add_column("subcategories")
    for cat in spec["categories"]:
        c.add_row(Text(cat["id"]), Text(cat["name"]), Text("; ".join(s["name"] for s in cat["subcategories"])))
    console.print(c)
    d = Table(title="dimensions")
    for col in ("name", "labels", "ordered", "unsafe labels"):
        d.add_column(col)
    for dim in spec["dimensions"]:
        labels = " < ".join(dim["labels"]) if dim["ordered"] else ", ".join(dim["labels"])
        d.add_row(
            Text(dim["name"]), Text(labels), "yes" if dim["ordered"] else "no", Text(", ".join(dim["unsafe_labels"]))
        )
    console.print(d)


def _import_table(collection: str, reports: list[Any]) -> Any:
    """One row per file, new / updated / unchanged in one cell per kind: fits 80 columns for any number of files."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    formats = ", ".join(dict.fromkeys(r.format for r in reports))
    table = Table(
        title=Text(f"import into {collection} [{formats}]"),
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        caption="items, verdicts, labels: new/updated/unchanged; media: files stored; bad: rows rejected; "
        "#: import batch; -: nothing imported",
    )
    table.add_column("file", overflow="fold", ratio=1)
    for name in ("rows", "items", "verdicts", "labels", "media", "bad", "#"):
        table.add_column(name, justify="right", no_wrap=True)
    for r in reports:
        counts = [
            f"{r.items_new}/{r.items_updated}/{r.items_unchanged}",
            f"{r.verdicts_new}/{r.verdicts_updated}/{r.verdicts_unchanged}",
            f"{r.annotations_new}/{r.annotations_updated}/{r.annotations_unchanged}",
            str(r.media_files_new),
            str(r.rejected),
        ]
        if not r.ok:  # the file was rolled back: "0/0/0" and "bad 0" would read as a clean import of nothing
            counts = ["-"] * len(counts)
        table.add_row(
            Text(Path(r.source).name + ("" if r.ok else " FAILED")), str(r.rows), *counts, str(r.batch_id or "-")
        )
    return table


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")
    app.add_typer(taxonomy_app, name="taxonomy")

    @app.command("import")
    def import_cmd(
        paths: Annotated[
            list[Path],
            typer.Argument(help="Files to import, in order (JSONL, CSV, Parquet or Inspect .eval/.json logs)."),
        ],
        collection: Annotated[
            str, typer.Option("--collection", "-c", help="Collection to import into (created on first use).")
        ],
        taxonomy: Annotated[
            str | None,
            typer.Option(
                "--taxonomy",
                "-t",
                help="uni-safebench, vlsu or a taxonomy file (default: the existing collection's taxonomy).",
            ),
        ] = None,
        fmt: Annotated[
            str, typer.Option("--format", "-f", help="auto, generic, uni-safebench, vlsu or inspect.")
        ] = "auto",
        task_type: Annotated[
            str | None,
            typer.Option(
                "--task-type", help="Task type for every row (id or name; default: from the row or file name)."
            ),
        ] = None,
        media_dir: Annotated[
            Path | None,
            typer.Option(
                "--media-dir",
                help="Folder that relative media paths are resolved in; nothing outside it is read "
                "(default: the file's folder).",
            ),
        ] = None,
        model: Annotated[str | None, typer.Option("--model", help="Model name for rows that name none.")] = None,
        skip_invalid: Annotated[
            bool,
            typer.Option("--skip-invalid", help="Import the good rows and write the bad ones to the rejects file."),
        ] = False,
        rejects: Annotated[
            Path | None,
            typer.Option("--rejects", help="Rejects file for --skip-invalid (default: <file>.rejects.jsonl)."),
        ] = None,
        update: Annotated[
            bool,
            typer.Option(
                "--update",
                help="Replace items, verdicts and annotations whose content changed "
                "(default: report them as conflicts).",
            ),
        ] = False,
        user: Annotated[str, typer.Option("--user", help="Recorded as the importer in the batch's provenance.")] = "",
        score_map: Annotated[
            Path | None,
            typer.Option(
                "--score-map",
                help="Inspect logs: TOML or JSON file mapping each scorer's values to a dimension's labels.",
                show_default=False,
            ),
        ] = None,
        db: DbOption = None,
        media_root: MediaRootOption = None,
    ) -> None:
        """Import benchmark outputs, verdicts and annotations; each file is all-or-nothing.

        Every problem is reported as FILE:LINE: field: message and the command exits 1 with
        the database unchanged. Files are imported in order and the run stops at the first
        file that fails (files before it stay imported).
        """

        from safereview.dataio.importers import FORMATS, import_file

        if fmt not in FORMATS:
            typer.echo(f"error: --format must be one of {', '.join(FORMATS)}", err=True)
            raise typer.Exit(2)
        cfg = config(db, media_root)
        engine = engine_for(cfg)
        reports = []
        failed = False
        try:
            if rejects is not None and rejects.exists():
                rejects.unlink()
            for path in paths:
                rep = import_file(
                    engine,
                    path,
                    format=fmt,
                    collection=collection,
                    taxonomy=taxonomy,
                    task_type=task_type,
                    media_dir=media_dir,
                    model=model,
                    skip_invalid=skip_invalid,
                    rejects_path=rejects,
                    actor=principal(),
                    user=user,
                    update=update,
                    media_root=cfg.media_root_override or None,  # else the database's own
                    config=cfg,
                    append_rejects=rejects is not None,
                    score_map=score_map,
                )
                reports.append(rep)
                if not rep.ok:
                    failed = True
                    break
                # later files may reference items of earlier ones: the taxonomy is now stored
                taxonomy = None
        finally:
            engine.dispose()

        console.print(_import_table(collection, reports))
        for rep in reports:
            for note in rep.notes:
                console.print(f"{Path(rep.source).name}: {note}", highlight=False)
            if rep.rejects_path:
                console.print(f"{count(rep.rejected, 'rejected row')} written to {rep.rejects_path}")
            shown = rep.errors[:200]
            for msg in shown:  # plain, unwrapped: one FILE:LINE: field: message per line
                typer.echo(msg, err=True)
            if len(rep.errors) > len(shown):
                typer.echo(f"... and {count(len(rep.errors) - len(shown), 'more problem')}", err=True)
        if failed:
            typer.echo(
                f"import failed: {reports[-1].source} was not imported; the database is unchanged for that file",
                err=True,
            )
            raise typer.Exit(1)

    collections = typer.Typer(
        help="List collections with their taxonomy and counts of items, verdicts and "
        "annotations; `collections set` changes review settings.",
        invoke_without_command=True,
    )
    app.add_typer(collections, name="collections")

    @collections.callback()
    def collections_cmd(ctx: typer.Context, db: DbOption = None) -> None:
        """List collections with their taxonomy, review settings and counts of items, verdicts and annotations."""
        if ctx.invoked_subcommand is not None:
            return
        _list_collections(db)

    @collections.command("set")
    def collections_set(
        name: Annotated[str, typer.Argument(help="Collection name (as `safereview collections` lists it).")],
        overlap: Annotated[int | None, typer.Option("--overlap", help="Annotators per item (k), 1 to 50.")] = None,
        blind: Annotated[
            bool | None,
            typer.Option("--blind/--open", help="Blind review hides the judge's verdict until the annotator commits."),
        ] = None,
        audit_share: Annotated[
            float | None,
            typer.Option(
                "--uniform-share",
                "--audit-share",
                help="Least share of the queue's sampling design spread evenly over items (1 = random order), "
                "0 to 1; fixed once review starts, and raised then if the judge's scores sit on a few items.",
            ),
        ] = None,
        archived: Annotated[
            bool | None, typer.Option("--archive/--unarchive", help="Archived collections leave the review queue.")
        ] = None,
        protect_media: Annotated[
            bool | None,
            typer.Option(
                "--protect-media/--no-protect-media",
                help="Reviewers see images and video blurred and greyscale until they show them.",
            ),
        ] = None,
        break_minutes: Annotated[
            int | None, typer.Option("--break-minutes", help="Suggest a break after this many minutes (0 = never).")
        ] = None,
        break_unsafe_items: Annotated[
            int | None,
            typer.Option("--break-unsafe-items", help="... or after this many items labelled unsafe (0 = never)."),
        ] = None,
        reveal_reason: Annotated[
            str | None,
            typer.Option(
                "--reveal-reason", help="required or optional: a reason for a label changed after seeing the judge."
            ),
        ] = None,
        db: DbOption = None,
    ) -> None:
        """Change a collection's review settings (only the options given); same checks as the Collections page."""
        from safereview.db.engine import session_scope
        from safereview.workflow.collections import update_settings
        from safereview.workflow.errors import WorkflowError

        reviewer = (protect_media, break_minutes, break_unsafe_items, reveal_reason)
        if overlap is None and blind is None and audit_share is None and archived is None and reviewer == (None,) * 4:
            typer.echo(
                "nothing to change: give --overlap, --blind/--open, --uniform-share, --archive/--unarchive, "
                "--protect-media, --break-minutes, --break-unsafe-items or --reveal-reason",
                err=True,
            )
            raise typer.Exit(2)
        engine = engine_for(config(db))
        try:
            with session_scope(engine) as s:
                col = update_settings(
                    s,
                    name,
                    actor=principal(),
                    overlap_target=overlap,
                    blind=blind,
                    audit_share=audit_share,
                    archived=archived,
                    protect_media=protect_media,
                    break_minutes=break_minutes,
                    break_unsafe_items=break_unsafe_items,
                    reveal_reason=reveal_reason,
                )
                shown = (
                    f"{col.name}: overlap k={col.overlap_target}, {'blind' if col.blind else 'open'}, "
                    f"uniform share {col.audit_share:g}{', archived' if col.archived else ''}"
                )
        except WorkflowError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        finally:
            engine.dispose()
        console.print(shown, highlight=False)

    def _list_collections(db: str | None) -> None:
        import sqlalchemy as sa
        from rich import box
        from rich.table import Table
        from rich.text import Text

        from safereview.db.models import Annotation, Collection, Item, Taxonomy, Verdict

        cfg = config(db)
        engine = engine_for(cfg)
        ct, it, vt, at, tt = (m.__table__ for m in (Collection, Item, Verdict, Annotation, Taxonomy))  # type: ignore[attr-defined]
        try:
            with engine.connect() as conn:
                cols = conn.execute(
                    sa.select(
                        ct.c.id,
                        ct.c.name,
                        tt.c.name.label("tax"),
                        ct.c.overlap_target,
                        ct.c.blind,
                        ct.c.audit_share,
                        ct.c.design_share,
                        ct.c.archived,
                    )
                    .join(tt, tt.c.id == ct.c.taxonomy_id)
                    .order_by(ct.c.name)
                ).all()
                items = dict(
                    conn.execute(sa.select(it.c.collection_id, sa.func.count()).group_by(it.c.collection_id)).all()
                )
                verdicts = dict(
                    conn.execute(
                        sa.select(it.c.collection_id, sa.func.count())
                        .select_from(vt.join(it, it.c.id == vt.c.item_id))
                        .group_by(it.c.collection_id)
                    ).all()
                )
                anns = dict(
                    conn.execute(
                        sa.select(it.c.collection_id, sa.func.count())
                        .select_from(at.join(it, it.c.id == at.c.item_id))
                        .group_by(it.c.collection_id)
                    ).all()
                )
        finally:
            engine.dispose()
        table = Table(title="collections", box=box.SIMPLE_HEAD)
        # wide enough for the longest word of a name ("demo-unified-model"): a narrow terminal
        # then wraps names at their spaces instead of cutting a word in two
        longest = max((len(word) for c in cols for word in c.name.split()), default=4)
        table.add_column("name", overflow="fold", min_width=min(longest, 40))
        table.add_column("taxonomy", overflow="fold")
        for col in ("items", "verdicts", "labels"):
            table.add_column(col, justify="right")
        table.add_column("review", overflow="fold")  # overlap k, blind or open, audit share
        for c in cols:
            share = c.audit_share if c.design_share is None else max(c.audit_share, c.design_share)
            review = f"k={c.overlap_target} · {'blind' if c.blind else 'open'} · uniform {share:.0%}"
            table.add_row(
                Text(c.name),
                Text(c.tax),
                str(items.get(c.id, 0)),
                str(verdicts.get(c.id, 0)),
                str(anns.get(c.id, 0)),
                review + (" · archived" if c.archived else ""),
            )
        console.print(table)
        if not cols:
            console.print("no collections yet: see `safereview import --help`")

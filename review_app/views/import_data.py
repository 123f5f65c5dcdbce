"""Import (admins): upload a data file (and optionally a ZIP of its media) and import it.

The upload goes through exactly the CLI's path (``dataio.importers.import_file``): same
validation, same all-or-nothing transaction, same report. Errors are shown as plain text.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import streamlit as st

from safereview.review_app import ui
from safereview.review_app.uploads import extract_zip, safe_name

DATA_TYPES = ["jsonl", "csv", "parquet"]


def page() -> None:
    from safereview.dataio.importers import FORMATS, import_file
    from safereview.db.taxonomy import PRESETS
    from safereview.workflow import policies

    user = ui.require("import")
    cfg = ui.config()
    st.subheader("Import")
    st.caption(
        f"Same validation as `safereview import`: a bad row rejects the whole file unless you choose to "
        f"skip invalid rows. Uploads up to {cfg.max_upload_mb} MB."
    )
    infos = ui.collections(include_archived=True)
    with st.form("import_form", border=True):
        data = st.file_uploader(
            "Data file (JSONL, CSV or Parquet)", type=DATA_TYPES, key="imp_file", max_upload_size=cfg.max_upload_mb
        )
        media_zip = st.file_uploader(
            "Media files as a ZIP (optional; paths in the data file are relative to the ZIP's root)",
            type=["zip"],
            key="imp_zip",
            max_upload_size=cfg.max_upload_mb,
        )
        c1, c2 = st.columns(2)
        existing = [c.name for c in infos]
        target = c1.selectbox("Collection", ["(new collection)", *existing], format_func=ui.plain, key="imp_target")
        new_name = c2.text_input(
            "New collection name",
            max_chars=200,
            key="imp_new",
            disabled=False,
            placeholder="e.g. uni-safebench / BAGEL",
        )
        c3, c4, c5 = st.columns(3)
        fmt = c3.selectbox("Format", FORMATS, key="imp_format")
        taxonomy = c4.selectbox("Taxonomy (new collections)", list(PRESETS), key="imp_tax")
        model = c5.text_input("Model (if the file has none)", max_chars=200, key="imp_model")
        task_type = st.text_input("Task type (if the file has none)", max_chars=100, key="imp_task")
        c6, c7 = st.columns(2)
        skip_invalid = c6.checkbox("Skip invalid rows (import the rest, report the rejected)", key="imp_skip")
        update = c7.checkbox("Update items whose content changed", key="imp_update")
        go = st.form_submit_button("Import", type="primary", icon=":material/upload:")
    if not go:
        return
    policies.require(user, "import")
    if data is None:
        st.warning("Choose a data file first.")
        return
    collection = new_name.strip() if target == "(new collection)" else target
    if not collection:
        st.warning("Name the new collection.")
        return
    work = Path(tempfile.mkdtemp(prefix="safereview-upload-"))
    try:
        path = work / safe_name(data.name)
        path.write_bytes(data.getbuffer())
        media_dir = work / "media"
        media_dir.mkdir()
        if media_zip is not None:
            try:
                n = extract_zip(media_zip, media_dir, max_bytes=cfg.max_upload_mb * 4 << 20)
            except (ValueError, zipfile.BadZipFile) as exc:
                st.error("Media ZIP refused:")
                ui.safe_code(str(exc))
                return
            st.caption(f"{n} media files unpacked.")
        rejects = work / "rejects.jsonl"
        with st.spinner("Importing…"):
            report = import_file(
                ui.get_engine(),
                path,
                actor=user,
                format=fmt,
                collection=collection,
                taxonomy=taxonomy if target == "(new collection)" else None,
                task_type=task_type or None,
                media_dir=media_dir,
                model=model or None,
                skip_invalid=skip_invalid,
                rejects_path=rejects,
                update=update,
                media_root=cfg.media_root,
                config=cfg,
            )
        _show_report(report, rejects, user, lambda msg: _for_the_page(msg, work, path, data.name))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ui.clear_data_caches()


# the importer speaks CLI; on this page the same choices are form fields
_FIELDS = {
    "pass --task-type": "fill in “Task type”",
    "--task-type": "“Task type”",
    "--media-dir": "the media ZIP",
    "--skip-invalid": "“Skip invalid rows”",
    "--update": "“Update items whose content changed”",
    "--format": "“Format”",
    "--taxonomy": "“Taxonomy”",
    "--model": "“Model”",
}


def _for_the_page(message: str, work: Path, path: Path, uploaded_name: str) -> str:
    """An importer message as the page's user needs it: the uploaded file's own name instead of
    the server's temporary path, and the form's fields instead of command-line flags."""
    out = message.replace(str(path), uploaded_name).replace(str(work) + "/", "")
    for flag, field in _FIELDS.items():
        out = out.replace(flag, field)
    return out


def _show_report(report: Any, rejects: Path, user: Any, say: Any = str) -> None:
    if report.ok:
        st.success(
            f"Imported into {ui.md_literal(report.collection)}: {report.items_new} new items, "
            f"{report.items_updated} updated, {report.items_unchanged} unchanged; {report.verdicts_new} "
            f"verdicts, {report.annotations_new} annotations, {report.media_files_new} media files; "
            f"{report.rejected} rows rejected ({report.seconds:.1f} s).",
            icon=":material/check_circle:",
        )
    else:
        st.error("Nothing was imported. Problems found:", icon=":material/error:")
    if report.errors:
        ui.safe_code(
            "\n".join(say(e) for e in report.errors[:500])
            + (f"\n… and {len(report.errors) - 500} more" if len(report.errors) > 500 else "")
        )
    if report.notes:
        ui.safe_text("\n".join(say(n) for n in report.notes[:100]))
    if report.rejected and rejects.is_file():
        from safereview.review_app import runtime, server

        key = runtime.downloads.put(int(user.id), "rejects.jsonl", "application/jsonl", rejects.read_bytes())
        st.link_button(
            "Download the rejected rows (JSONL)", server.download_url("file", key), icon=":material/download:"
        )


page()

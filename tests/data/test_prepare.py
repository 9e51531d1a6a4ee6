import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from tunesmith.config import DataConfig
from tunesmith.data.prepare import carve, prepare
from tunesmith.data.prepared import label_order, read_prepared
from tunesmith.errors import TunesmithError


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run(tmp_path, seed=0, tokenizer=None, **data):
    report = prepare(DataConfig(**data), seed, tmp_path / "out", tokenizer=tokenizer, overwrite=True)
    return report, {s: pq.read_table(tmp_path / "out" / f"{s}.parquet").to_pylist() for s in report["rows"]}


def test_carve_is_seeded_and_stratified():
    labels = np.array([0] * 80 + [1] * 20)
    taken = carve(np.ones(100, bool), 0.25, seed=1, labels=labels)
    assert len(taken) == 25 and (labels[taken] == 1).sum() == 5
    assert (carve(np.ones(100, bool), 0.25, seed=1, labels=labels) == taken).all()
    assert not (carve(np.ones(100, bool), 0.25, seed=2, labels=labels) == taken).all()
    groups = np.repeat(np.arange(10), 5)
    by_doc = carve(np.ones(50, bool), 0.2, seed=0, groups=groups)
    assert len(by_doc) == 10 and len(np.unique(groups[by_doc])) == 2


def test_splits_and_test_overlap_removed_from_train(tmp_path):
    train, test = tmp_path / "t.csv", tmp_path / "s.csv"
    train.write_text(
        "text,label\n"
        + "".join(f"row number {i} of many,{'x' if i % 2 else 'y'}\n" for i in range(100))
        + "Row   number 3 of MANY!,x\n"
    )
    test.write_text("text,label\nrow number 3 of many,x\nrow number 4 of many,y\n")
    report, rows = run(tmp_path, train=str(train), test=str(test), val_fraction=0.2, dedup={"near": False})
    removed = report["files"]["train"]["steps"][-1]["removed"]
    assert removed == {"exact duplicate of a test row": 3}
    assert report["rows"] == {"train": 78, "val": 20, "test": 2}
    assert report["label_names"] == ["x", "y"] and report["labels"]["val"] == {"x": 10, "y": 10}
    again = read_prepared(tmp_path / "out")
    assert again.splits["train"].texts == [r["text"] for r in rows["train"]]


def test_val_split_capped_at_val_max_rows(tmp_path):
    train = tmp_path / "t.csv"
    train.write_text("text,label\n" + "".join(f"row number {i} of many,{'x' if i % 4 else 'y'}\n" for i in range(200)))
    report, _ = run(tmp_path, train=str(train), val_fraction=0.2, test_fraction=0.1, val_max_rows=20)
    assert report["rows"] == {"train": 160, "val": 20, "test": 20}  # test keeps its 10%; val 20 rows, not 36
    assert report["labels"]["val"] == {"x": 15, "y": 5}  # still stratified
    assert "20 rows (data.val_max_rows) instead of 20%" in report["val_from"]
    report, _ = run(tmp_path, train=str(train), val_fraction=0.2, test_fraction=0.1, val_max_rows=None)
    assert report["rows"]["val"] == 36


def test_near_duplicates_within_and_across_splits(tmp_path):
    base = "the service at this branch was quick and the staff explained every fee clearly"
    test, train = tmp_path / "test.jsonl", tmp_path / "train.jsonl"
    test.write_text(json.dumps({"text": base, "label": "good"}) + "\n")
    rng = np.random.default_rng(0)
    words = (
        "apple river green loud table seven cloud quiet paper orange winter stone music fast window bread "
        "silver candle forest engine pocket ladder violet harbor lemon tiger marble rocket velvet canyon"
    ).split()
    other = [" ".join(rng.choice(words, 10, replace=False)) for _ in range(30)]
    lines = [{"text": t, "label": "bad" if i % 2 else "good"} for i, t in enumerate(other)]
    lines += [
        {"text": base.replace("quick", "quik"), "label": "good"},  # a near copy of the test row: leakage
        {"text": other[0] + " today", "label": "good"},
    ]  # a near copy of a train row
    train.write_text("".join(json.dumps(x) + "\n" for x in lines))
    report, rows = run(tmp_path, train=str(train), test=str(test), val_fraction=0)
    removed = report["files"]["train"]["steps"][-1]["removed"]
    assert removed == {"near duplicate of a test row": 1, "near duplicate": 1}
    assert len(rows["train"]) == 30
    examples = report["files"]["train"]["removed_examples"]["near duplicate of a test row"]
    assert examples[0]["text"].startswith("the service") and examples[0]["where"].endswith("train.jsonl:31")


def test_a_test_file_you_give_is_kept_whole_and_still_guards_against_leakage(tmp_path):
    question = "how do I reset the password of my online banking account"
    test, train = tmp_path / "test.csv", tmp_path / "train.csv"
    test.write_text(f"text,label\n{question},a\n{question}!,a\n{question.replace('reset', 'resett')},a\nother,b\n")
    train.write_text(
        "text,label\n" + "".join(f"row number {i} of many,{'ab'[i % 2]}\n" for i in range(40)) + f"{question}?,a\n"
    )
    report, rows = run(tmp_path, train=str(train), test=str(test), val_fraction=0)
    assert report["rows"]["test"] == 4 and report["files"]["test"]["steps"][-1]["removed"] == {}
    assert report["files"]["train"]["steps"][-1]["removed"] == {"exact duplicate of a test row": 1}
    report, _ = run(tmp_path, train=str(train), test=str(test), val_fraction=0, dedup={"test": True})
    assert report["rows"]["test"] == 2  # asked for: the exact and the near copy inside the test file go


def test_short_texts_that_differ_by_a_word_are_not_near_duplicates(tmp_path):
    short = ["what is the melting point of gold", "what is the melting point of iron", "what is the boiling point"]
    long = "what is the melting point of gold at the pressure you find on the top of a high mountain"
    rows = [{"text": t, "label": "ab"[i % 2]} for i, t in enumerate(short + [long, long.replace("high", "tall")])]
    rows += [{"text": f"filler {i}", "label": "ab"[i % 2]} for i in range(10)]
    report, kept = run(tmp_path, train=write_jsonl(tmp_path / "d.jsonl", rows), val_fraction=0, test_fraction=0)
    assert {r["text"] for r in kept["train"]} >= set(short)
    assert report["files"]["train"]["steps"][-1]["removed"] == {"near duplicate": 1}  # the long one-word edit


@pytest.mark.parametrize("batch", [4096, 1])  # the chain inside one batch, and across batches
def test_a_chain_of_near_copies_keeps_only_its_first_row(tmp_path, monkeypatch, batch):
    """A ~ B ~ C with C not near A: B goes as a copy of A, and C as a copy of B although B was removed.
    A's own later copy B must not take A with it."""
    import tunesmith.data.prepare as prep

    monkeypatch.setattr(prep, "BATCH", batch)
    a = "the service at this branch was quick and the staff explained every single fee very clearly to us"
    b = "the service at this branch was quick and the staff explained every single fee very patiently to me"
    c = "the service at this office was quick and the staff explained every single rule very patiently to me"
    filler = [
        "a dry account of rainfall in the northern hills",
        "nobody expected the second act to be this loud",
        "three green parrots argued over a mango all afternoon",
        "the bridge closes at nine on sundays",
    ]
    p = tmp_path / "d.jsonl"
    p.write_text(
        "".join(
            json.dumps({"text": t, "label": str(i % 2)}) + "\n"
            for i, t in enumerate([a, *filler[:2], b, *filler[2:], c])
        )
    )
    report, rows = run(tmp_path, train=str(p), val_fraction=0, test_fraction=0)
    assert report["files"]["train"]["steps"][-1]["removed"] == {"near duplicate": 2}
    assert [r["text"] for r in rows["train"]] == [a, *filler]


def test_cleaning_html_unicode_control_and_length(tmp_path):
    p = tmp_path / "d.jsonl"
    texts = [
        "<p>Caf\u0065\u0301 <b>bold</b> &amp; more</p>",
        "zero\u200bwidth\x07 bell",
        "a   lot\tof    space ",
        "ok",
        "<br>",
        "x" * 50,
    ] + [f"filler text {i}" for i in range(10)]
    p.write_text("".join(json.dumps({"text": t, "label": str(i % 2)}) + "\n" for i, t in enumerate(texts)))
    report, rows = run(
        tmp_path,
        train=str(p),
        val_fraction=0,
        test_fraction=0,
        clean={"min_chars": 3, "max_chars": 40},
        dedup={"near": False},
    )
    kept = [r["text"] for r in rows["train"]]
    assert kept[:3] == ["Caf\u00e9 bold & more", "zerowidth bell", "a lot of space"]
    removed = report["files"]["train"]["steps"][2]["removed"]
    assert removed == {"shorter than 3 characters": 1, "empty after cleaning": 1, "longer than 40 characters": 1}
    assert report["cleaning"]["texts_changed"] == {"unicode": 1, "html": 2, "control_chars": 1, "whitespace": 2}


def test_label_names_sort_numbers_numerically():
    assert label_order({"10", "2", "1"}) == ["1", "2", "10"]
    assert label_order({"pos", "neg"}) == ["neg", "pos"]


def test_missing_column_names_the_columns(fixtures, tmp_path):
    with pytest.raises(
        TunesmithError, match=r"column 'text' \(data.text\) not found; the columns are: sentence, label"
    ):
        run(tmp_path, train=str(fixtures / "sst2_train.tsv"), shape="classify", text="text")
    report, _ = run(tmp_path, train=str(fixtures / "sst2_train.tsv"))  # "sentence" is a known name for the text
    assert report["shape"] == "classify" and report["files"]["train"]["fields"] == {
        "text": "sentence",
        "label": "label",
    }


def test_single_class_and_empty_data_fail_before_training(tmp_path):
    one = tmp_path / "one.csv"
    one.write_text("text,label\nalpha,x\nbravo,x\ncharlie,x\n")
    with pytest.raises(TunesmithError, match="single class"):
        run(tmp_path, train=str(one))
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n, x\n")
    with pytest.raises(TunesmithError, match="empty text"):
        run(tmp_path, train=str(empty))
    with pytest.raises(TunesmithError, match="no rows left"):
        run(tmp_path, train=str(empty), on_error="skip")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


def test_bad_rows_fail_with_line_or_are_skipped_and_counted(tmp_path):
    p = tmp_path / "d.jsonl"
    good = "".join(f'{{"text": "text {i}", "label": "{i % 2}"}}\n' for i in range(20))
    p.write_text(good + '{"text": "oops"\n{"text": "", "label": "1"}\n{"label": "0"}\n')
    with pytest.raises(TunesmithError, match=r"d\.jsonl:21: invalid JSON"):
        run(tmp_path, train=str(p))
    report, _ = run(tmp_path, train=str(p), on_error="skip", test_fraction=0, val_fraction=0, dedup={"near": False})
    f = report["files"]["train"]
    assert f["rows_read"] == 23 and f["rows_kept"] == 20
    assert f["steps"][0]["removed"] == {"invalid JSON": 1}
    assert f["steps"][1]["removed"] == {"empty text": 1, "missing field 'text'": 1}
    assert f["removed_examples"]["invalid JSON"][0]["where"].endswith("d.jsonl:21")


def test_unseen_test_labels_are_an_error(tmp_path):
    tr, te = tmp_path / "tr.csv", tmp_path / "te.csv"
    tr.write_text("text,label\nalpha,x\nbravo,y\ncharlie,x\ndelta,y\n")
    te.write_text("text,label\necho,z\n")
    with pytest.raises(TunesmithError, match=r"test split has labels that never occur in train: \['z'\]"):
        run(tmp_path, train=str(tr), test=str(te), val_fraction=0)


def test_sample_is_seeded(fixtures, tmp_path):
    cfg = dict(
        train=str(fixtures / "sst2_train.tsv"), sample=200, val_fraction=0, test_fraction=0.1, dedup={"near": False}
    )
    a, rows_a = run(tmp_path, seed=3, **cfg)
    b, rows_b = run(tmp_path, seed=3, **cfg)
    assert a["rows"]["train"] + a["rows"]["test"] == 200 and rows_a == rows_b


def test_split_column(tmp_path):
    p = tmp_path / "d.csv"
    rows = [f"text {i},{'ab'[i % 2]},{['train', 'train', 'Validation', 'test'][i % 4]}" for i in range(40)]
    p.write_text("text,label,part\n" + "\n".join(rows) + "\n")
    report, _ = run(tmp_path, train=str(p), split_column="part", dedup={"near": False})
    assert report["rows"] == {"train": 20, "val": 10, "test": 10}
    p.write_text("text,label,part\nx,a,train\ny,b,holdout\n")
    with pytest.raises(TunesmithError, match=r"'part' is 'holdout', not one of train, val, test"):
        run(tmp_path, train=str(p), split_column="part")


def test_pii_is_replaced_and_never_reaches_the_output(tmp_path):
    p = tmp_path / "d.jsonl"
    rows = [
        {
            "text": f"ticket {w}: mail jane.doe{i}@example.com or call +44 20 7946 0{i:03d} about {w}",
            "label": str(i % 2),
        }
        for i, w in enumerate("alpha bravo charlie delta echo foxtrot golf hotel india juliet".split())
    ]
    rows.append(dict(rows[0]))  # a duplicate: shown in the report's removed examples, anonymised
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report, out = run(
        tmp_path,
        train=str(p),
        val_fraction=0,
        test_fraction=0,
        pii={"entities": ["EMAIL", "PHONE"]},
        dedup={"near": False},
    )
    assert report["pii"]["replaced"] == {"EMAIL": 10, "PHONE": 10}
    assert out["train"][0]["text"] == "ticket alpha: mail <EMAIL> or call <PHONE> about alpha"
    assert report["files"]["train"]["removed_examples"]["exact duplicate"][0]["text"].startswith(
        "ticket alpha: mail <EMAIL>"
    )
    for f in (tmp_path / "out").iterdir():
        assert b"example.com" not in f.read_bytes() and b"7946" not in f.read_bytes()

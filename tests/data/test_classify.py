import pytest

from tunesmith.config import DataConfig
from tunesmith.data.classify import label_order, prepare, read_prepared, stratified_split, write_prepared
from tunesmith.errors import TunesmithError


def test_seeded_stratified_split_keeps_class_shares():
    labels = ["a"] * 80 + ["b"] * 20
    kept, taken = stratified_split(labels, 0.25, seed=1)
    assert sorted(kept + taken) == list(range(100))
    assert [labels[i] for i in taken].count("b") == 5 and len(taken) == 25
    assert stratified_split(labels, 0.25, seed=1) == (kept, taken)
    assert stratified_split(labels, 0.25, seed=2) != (kept, taken)


def test_prepare_splits_and_removes_test_texts_from_train(fixtures, tmp_path):
    train = tmp_path / "t.csv"
    test = tmp_path / "s.csv"
    train.write_text("text,label\n" + "".join(f"text {i},{'x' if i % 2 else 'y'}\n" for i in range(100)) + "Text   3,x\n")
    test.write_text("text,label\ntext 3,x\ntext 4,y\n")
    prep = prepare(DataConfig(train=str(train), test=str(test), val_fraction=0.2), seed=0)
    assert prep.report["removed"]["train_overlapping_test"] + prep.report["removed"]["val_overlapping_test"] == 3
    assert len(prep.splits["test"]) == 2 and len(prep.splits["train"]) + len(prep.splits["val"]) == 101 - 3
    assert prep.labels == ["x", "y"]
    write_prepared(prep, tmp_path / "data")
    again = read_prepared(tmp_path / "data")
    assert again.splits["train"].texts == prep.splits["train"].texts and again.labels == ["x", "y"]


def test_label_names_sort_numbers_numerically():
    assert label_order({"10", "2", "1"}) == ["1", "2", "10"]
    assert label_order({"pos", "neg"}) == ["neg", "pos"]


def test_missing_column_names_the_columns(fixtures):
    with pytest.raises(TunesmithError, match=r"column 'text' not found; the columns are: sentence, label"):
        prepare(DataConfig(train=str(fixtures / "sst2_train.tsv")), seed=0)


def test_single_class_and_empty_data_fail_before_training(tmp_path):
    one = tmp_path / "one.csv"
    one.write_text("text,label\na,x\nb,x\nc,x\n")
    with pytest.raises(TunesmithError, match="single class"):
        prepare(DataConfig(train=str(one)), seed=0)
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n, x\n")
    with pytest.raises(TunesmithError, match="empty text"):
        prepare(DataConfig(train=str(empty)), seed=0)
    with pytest.raises(TunesmithError, match="no training rows"):
        prepare(DataConfig(train=str(empty), on_error="skip"), seed=0)


def test_bad_rows_fail_with_line_or_are_skipped_and_counted(tmp_path):
    p = tmp_path / "d.jsonl"
    good = "".join(f'{{"text": "t{i}", "label": "{i % 2}"}}\n' for i in range(20))
    p.write_text(good + '{"text": "oops"\n{"text": "", "label": "1"}\n{"label": "0"}\n')
    with pytest.raises(TunesmithError, match=r"d\.jsonl:21: invalid JSON"):
        prepare(DataConfig(train=str(p)), seed=0)
    prep = prepare(DataConfig(train=str(p), on_error="skip"), seed=0)
    f = prep.report["files"]["train"]
    assert f["rows_kept"] == 20 and f["skipped"] == {"invalid JSON": 1, "empty text": 1, "missing field 'text'": 1}
    assert f["skipped_examples"][0]["where"].endswith("d.jsonl:21")


def test_unseen_test_labels_are_an_error(tmp_path):
    tr, te = tmp_path / "tr.csv", tmp_path / "te.csv"
    tr.write_text("text,label\na,x\nb,y\nc,x\nd,y\n")
    te.write_text("text,label\ne,z\n")
    with pytest.raises(TunesmithError, match=r"test split has labels that never occur in train: \['z'\]"):
        prepare(DataConfig(train=str(tr), test=str(te), val_fraction=0), seed=0)


def test_sample_is_seeded(fixtures):
    cfg = DataConfig(train=str(fixtures / "sst2_train.tsv"), text="sentence", sample=200, val_fraction=0, test_fraction=0.1)
    a, b = prepare(cfg, seed=3), prepare(cfg, seed=3)
    assert len(a.splits["train"]) + len(a.splits["test"]) == 200
    assert a.splits["train"].texts == b.splits["train"].texts


def test_split_column(tmp_path):
    p = tmp_path / "d.csv"
    rows = [f"t{i},{'ab'[i % 2]},{['train', 'train', 'Validation', 'test'][i % 4]}" for i in range(40)]
    p.write_text("text,label,part\n" + "\n".join(rows) + "\n")
    prep = prepare(DataConfig(train=str(p), split_column="part"), seed=0)
    assert {k: len(v) for k, v in prep.splits.items()} == {"train": 20, "val": 10, "test": 10}
    p.write_text("text,label,part\nx,a,train\ny,b,holdout\n")
    with pytest.raises(TunesmithError, match=r"'part' is 'holdout', not one of train, val, test"):
        prepare(DataConfig(train=str(p), split_column="part"), seed=0)

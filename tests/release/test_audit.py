import csv
import json
import random

import pytest

from tunesmith import api
from tunesmith.errors import TunesmithError
from tunesmith.release.audit import data_warnings
from tunesmith.release.perturb import casing, negation, punctuation, typos


def test_audit_of_the_test_split_matches_the_runs_own_score(classifier_run):
    res = api.audit(classifier_run, rows=60)
    ev = json.loads((classifier_run / "eval.json").read_text())
    assert res["overall"]["accuracy"] == round(ev["tuned"]["accuracy"], 4)
    assert json.loads((classifier_run / "audit.json").read_text()) == res
    names = [s["slice"] for s in res["slices"]]
    assert any(n.startswith("length ") for n in names) and "label=0" in names and "label=1" in names
    for s in res["slices"]:  # a warning exactly where the slice is more than `gap` below the whole
        assert ("warning" in s) == (s["accuracy"] < res["overall"]["accuracy"] - 0.05)
    sizes = [s["n"] for s in res["slices"] if s["slice"].startswith("label=")]
    assert sum(sizes) == res["rows"]
    p = res["robustness"]["perturbations"]
    assert {"typos", "casing", "punctuation", "negation"} <= set(p) and p["casing"]["texts"] > 0
    assert res["robustness"]["rows"] == min(60, res["rows"]) and len(res["robustness"]["most_fragile"]) <= 10
    assert api.audit(classifier_run, rows=60) == res  # seeded
    assert "<h2>Audit</h2>" in (classifier_run / "report.html").read_text()


def test_audit_of_a_file_gives_slices_and_fairlearn_group_gaps(classifier_run, fixtures, tmp_path):
    rows = list(csv.reader((fixtures / "sst2_dev.tsv").open(), delimiter="\t"))[1:]
    data = tmp_path / "audit.tsv"
    with data.open("w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["sentence", "label", "source", "group"])
        for i, (text, label) in enumerate(rows[:200]):
            w.writerow([text, label, "web" if i % 3 else "print", "g1" if i % 2 else "g2"])
    res = api.audit(classifier_run, data, slice_column="source", sensitive="group", rows=30)
    assert [s["slice"] for s in res["slices"]] == ["source=print", "source=web"]
    assert sum(s["n"] for s in res["slices"]) == res["rows"] == 200
    fair = res["fairness"]
    assert set(fair["groups"]) == {"g1", "g2"} and fair["counts"] == {"g1": 100, "g2": 100}
    accs = [fair["groups"][g]["accuracy"] for g in ("g1", "g2")]
    assert fair["largest_gap"]["accuracy"] == pytest.approx(abs(accs[0] - accs[1]), abs=1e-3)


def test_audit_refuses_what_it_cannot_do(classifier_run, fixtures, tmp_path):
    with pytest.raises(TunesmithError, match=r"no column 'region'; its columns are sentence, label"):
        api.audit(classifier_run, fixtures / "sst2_dev.tsv", slice_column="region")
    with pytest.raises(TunesmithError, match="test split keeps only text and label.*give --data FILE"):
        api.audit(classifier_run, slice_column="region")


def test_perturbations_are_seeded_and_change_what_they_say():
    text = "the story was told with great warmth and humour"
    assert typos(text, random.Random(1)) == typos(text, random.Random(1))
    assert any(typos(text, random.Random(s)) != text for s in range(5))
    assert casing(text, random.Random(0)) in (text.upper(), text.lower(), text.title())
    assert punctuation("well, it works.", random.Random(0)) in ("well it works", "well, it works.!!!")
    assert negation(text, random.Random(0)) == "the story was not told with great warmth and humour"
    assert negation("a must-see film", random.Random(0)) is None


def test_data_warnings_name_imbalance_skew_and_duplicates(tmp_path):
    (tmp_path / "data").mkdir()
    report = {"labels": {"train": {"a": 600, "b": 40}}, "chars": {"train": {"median": 40}, "test": {"median": 100}},
              "files": {"train": {"rows_read": 700, "steps": [{"removed": {"exact duplicate": 12}}]}}}  # fmt: skip
    (tmp_path / "data" / "data_report.json").write_text(json.dumps(report))
    out = data_warnings(tmp_path)
    assert out[0].startswith("label imbalance: 'a' has 600") and "2.50x" in out[1] and "12 of 700" in out[2]


def test_audit_joins_text_columns_as_training_did(tiny_model, fixtures, tmp_path):
    from tests.conftest import tiny_config
    from tunesmith.infer.classifier import Classifier
    from tunesmith.release.audit import _rows

    rows = list(csv.reader((fixtures / "sst2_train.tsv").open(), delimiter="\t"))[1:301]
    data = tmp_path / "two.tsv"
    with data.open("w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["title", "body", "label"])
        w.writerows([[text.split(" ")[0], text, label] for text, label in rows])
    cfg = tiny_config(tiny_model, data, tmp_path)
    cfg["data"] |= {"text": ["title", "body"], "text_separator": " | "}
    cfg["train"] |= {"epochs": 1}
    run = api.train(cfg, quiet=True)
    texts, _, _ = _rows(run, Classifier.load(run), data, [])
    assert texts[0] == f"{rows[0][0].split(' ')[0]} | {rows[0][0].strip()}"

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunesmith.data.readers import read_records, read_text
from tunesmith.errors import TunesmithError


def fields(path, **kw):
    return [r.fields for r in read_records(path, **kw)]


def test_every_format_gives_the_same_rows(tmp_path):
    rows = [{"text": 'good, "really" good', "label": "pos"}, {"text": "bad\tbad", "label": "neg"}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "a.json").write_text(json.dumps({"data": rows}))
    (tmp_path / "a.csv").write_text('text,label\n"good, ""really"" good",pos\n"bad\tbad",neg\n')
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    for name in ("a.jsonl", "a.json", "a.csv", "a.parquet"):
        assert fields(tmp_path / name) == rows, name


def test_tsv_quotes_are_literal(fixtures):
    recs = list(read_records(fixtures / "sst2_train.tsv"))
    assert len(recs) == 1200 and set(recs[0].fields) == {"sentence", "label"}
    assert recs[0].where.endswith("sst2_train.tsv:2")


def test_latin1_is_detected_not_mojibake(fixtures):
    text = read_text(fixtures / "phrasebank_latin1.txt")
    # the source's own bytes read as latin-1 (e.g. "Sepp+ñl+ñ"), never as cp1250's "ń" or UTF-8 mojibake
    assert "Sepp+ñl+ñ" in text and "+àland" in text and "ń" not in text and "Ã" not in text
    recs = list(read_records(fixtures / "phrasebank_latin1.txt", fmt="csv", delimiter="@", columns=["text", "label"]))
    assert len(recs) == 60 and all(r.fields["label"] in {"positive", "negative", "neutral"} for r in recs)


def test_folder_per_label(fixtures):
    recs = list(read_records(fixtures / "news_folder" / "train"))
    labels = {r.fields["label"] for r in recs}
    assert len(recs) == 30 and labels == {
        "comp.graphics",
        "rec.sport.hockey",
        "sci.med",
        "sci.space",
        "talk.politics.mideast",
    }


def test_malformed_rows_carry_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "ok", "label": 1}\n{"text": "broken\n[1, 2]\n')
    recs = list(read_records(p))
    assert recs[0].error is None
    assert recs[1].where == f"{p}:2" and "invalid JSON" in recs[1].error
    assert recs[2].where == f"{p}:3" and "expected a JSON object" in recs[2].error
    c = tmp_path / "bad.csv"
    c.write_text("text,label\na,1\nb,2,extra\n")
    assert "expected 2 fields" in list(read_records(c))[1].error and list(read_records(c))[1].where.endswith(":3")


def test_binary_and_missing_and_unknown_suffix(tmp_path):
    b = tmp_path / "x.csv"
    b.write_bytes(b"\x00\x01\x02PK\x00")
    with pytest.raises(TunesmithError, match="binary"):
        list(read_records(b))
    with pytest.raises(TunesmithError, match="not found"):
        list(read_records(tmp_path / "nope.csv"))
    (tmp_path / "x.xlsx").write_text("x")
    with pytest.raises(TunesmithError, match="data.format"):
        list(read_records(tmp_path / "x.xlsx"))


def test_pkg_paths(tmp_path):
    with pytest.raises(TunesmithError, match="not installed"):
        list(read_records("pkg:no_such_package_here/x.csv"))
    recs = list(read_records("pkg:tunesmith/report/report.html.j2", fmt="csv", delimiter="\x01", columns=["line"]))
    assert recs


def test_layouts_that_need_no_script(tmp_path):
    from tunesmith.config import DataConfig
    from tunesmith.data.prepare import prepare

    def prepared(**data) -> list[dict]:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        cfg = DataConfig(val_fraction=0, test_fraction=0, dedup={"near": False}, **data)
        prepare(cfg, 0, out)
        return pq.read_table(out / "train.parquet").to_pylist()

    news = tmp_path / "news.csv"
    news.write_text(
        "title,description,class\nMarkets up,Stocks rose today,1\nCup final,Home side won,2\n"
        "Rates cut,Bank eases,1\nNew striker,Club signs,2\n"
    )
    rows = prepared(train=str(news), text=["title", "description"], text_separator=". ", label="class",
                    label_names={1: "Business", 2: "Sports"})  # fmt: skip
    assert rows[0] == {"text": "Markets up. Stocks rose today", "label": "Business"}
    names = tmp_path / "names.json"
    names.write_text('{"1": "Business"}')
    with pytest.raises(TunesmithError, match=r"news.csv:3: label '2' is not in data.label_names"):
        prepared(train=str(news), text=["title", "description"], label="class", label_names=str(names))
    with pytest.raises(TunesmithError, match=r"'descr' \(in data.text\) not found.*Did you mean 'description'"):
        prepared(train=str(news), text=["title", "descr"], label="class")

    lines = tmp_path / "lines.txt"
    lines.write_text("pos a fine and witty film\n__label__neg dull, dull, dull\npos lovely\nneg awful\n")
    rows = prepared(train=str(lines), format="lines")
    assert rows[:2] == [{"text": "a fine and witty film", "label": "pos"}, {"text": "dull, dull, dull", "label": "neg"}]
    last = tmp_path / "last.txt"
    last.write_text("a fine; witty film;pos\ndull;neg\nlovely;pos\nawful;neg\n")
    rows = prepared(train=str(last), format="lines", delimiter=";", label_position="last")
    assert rows[0] == {"text": "a fine; witty film", "label": "pos"}
    table = tmp_path / "rows.txt"
    table.write_text("a;x\nb;y\nc;x\nd;y\n")
    with pytest.raises(TunesmithError, match=r"looks like rows of data \(4 lines, each with 1 x ';'\).*format: csv"):
        prepared(train=str(table), label="label")

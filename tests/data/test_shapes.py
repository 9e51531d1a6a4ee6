import json

import pyarrow.parquet as pq
import pytest

from tunesmith.config import DataConfig
from tunesmith.data.prepare import prepare
from tunesmith.data.shapes import RowProblem, conversation, label_name, split_shared_prefix
from tunesmith.errors import TunesmithError


def run(tmp_path, tokenizer=None, **data):
    data = {"val_fraction": 0, "test_fraction": 0} | data
    report = prepare(DataConfig(**data), 0, tmp_path / "out", tokenizer=tokenizer, overwrite=True)
    return report, pq.read_table(tmp_path / "out" / "train.parquet").to_pylist()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_chat_and_sharegpt(fixtures, tmp_path):
    report, rows = run(tmp_path, train=str(fixtures / "oasst_20.jsonl"))
    assert report["shape"] == "chat" and len(rows) == 20
    assert rows[0]["messages"][0]["role"] == "user" and rows[0]["messages"][-1]["role"] == "assistant"
    report, rows = run(tmp_path, train=str(fixtures / "sharegpt_10.jsonl"))
    assert report["shape"] == "chat" and report["files"]["train"]["fields"] == {"messages": "conversations"}
    assert {m["role"] for r in rows for m in r["messages"]} <= {"system", "user", "assistant"}


def test_hh_rlhf_transcripts_split_into_prompt_and_two_replies(fixtures, tmp_path):
    report, rows = run(tmp_path, train=str(fixtures / "hh_rlhf_30.jsonl"), on_error="skip")
    assert report["shape"] == "preference" and rows
    raw = json.loads((fixtures / "hh_rlhf_30.jsonl").read_text().splitlines()[0])
    first = rows[0]
    assert first["prompt"][0]["content"] == "what are some pranks with a pen i can do?"
    assert first["prompt"][-1]["role"] == "user" and first["chosen"] != first["rejected"]
    assert raw["chosen"].rstrip().endswith(first["chosen"][-40:])


def test_instruction_from_a_template_and_from_alpaca_fields(fixtures, tmp_path):
    report, rows = run(
        tmp_path,
        train=str(fixtures / "dialogsum_20.jsonl"),
        response="summary",
        prompt_template="Summarise this dialogue:\n{dialogue}",
    )
    assert report["shape"] == "instruction" and rows[0]["prompt"].startswith("Summarise this dialogue:\n#Person1#:")
    alpaca = write_jsonl(
        tmp_path / "a.jsonl",
        [
            {"instruction": "Add", "input": "2 and 3", "output": "5"},
            {"instruction": "Name a colour", "input": "", "output": "Red"},
        ],
    )
    _, rows = run(tmp_path, train=alpaca)
    assert rows == [{"prompt": "Add\n\n2 and 3", "response": "5"}, {"prompt": "Name a colour", "response": "Red"}]


def test_a_test_file_of_reference_answers_keeps_them_all(fixtures, tmp_path):
    report = prepare(
        DataConfig(
            train=str(fixtures / "dialogsum_20.jsonl"),
            test=str(fixtures / "dialogsum_test_10.jsonl"),
            response="summary",
            references=["summary1", "summary2", "summary3"],
            val_fraction=0,
            prompt_template="Summarise this dialogue:\n{dialogue}",
        ),
        0,
        tmp_path / "out",
    )
    assert report["files"]["test"]["fields"]["response"] == "summary1"
    assert report["files"]["train"]["fields"]["response"] == "summary"
    test = pq.read_table(tmp_path / "out" / "test.parquet").to_pylist()
    given = [json.loads(line) for line in (fixtures / "dialogsum_test_10.jsonl").read_text().splitlines()]
    assert len(test) == 10 and test[0]["references"] == [given[0][f"summary{i}"] for i in (1, 2, 3)]
    assert test[0]["response"] == given[0]["summary1"]
    train = pq.read_table(tmp_path / "out" / "train.parquet").to_pylist()
    assert all(r["references"] == [r["response"]] for r in train)
    with pytest.raises(TunesmithError, match=r"column 'summary' \(data.response\) not found"):
        prepare(
            DataConfig(
                train=str(fixtures / "dialogsum_20.jsonl"),
                test=str(fixtures / "dialogsum_test_10.jsonl"),
                response="summary",
                shape="instruction",
                val_fraction=0,
                prompt_template="{dialogue}",
            ),
            0,
            tmp_path / "bad",
        )


def test_raw_text_is_chunked_by_tokens_with_overlap(tmp_path, tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    words = "the film was good and the plot was bad but the actors were great".split()
    for i in range(4):
        (docs / ("sub" if i % 2 else ".") / f"d{i}.txt").write_text(
            " ".join(words[(i + j) % len(words)] for j in range(100))
        )
    report, rows = run(
        tmp_path,
        tokenizer=lambda: tok,
        train=str(docs),
        shape="text",
        chunk_tokens=40,
        chunk_overlap=10,
        dedup={"exact": False, "near": False},
    )
    assert report["chunking"]["documents"] == 4 and {r["doc"] for r in rows} == {0, 1, 2, 3}
    doc = (docs / "d0.txt").read_text()
    n = len(tok(doc, add_special_tokens=False)["input_ids"])
    first = [r["text"] for r in rows if r["doc"] == 0]
    assert len(first) == len(range(0, n - 10, 30))  # 40 tokens per chunk, starting 30 apart
    assert all(38 <= len(tok(t, add_special_tokens=False)["input_ids"]) <= 42 for t in first[:-1])
    assert first[1][:12] in first[0][-60:] and doc.startswith(first[0]) and doc.endswith(first[-1])


def test_text_chunks_split_by_document(tmp_path, tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    rows = [{"text": f"document {i} " + "word " * 60 + f"end {i}"} for i in range(10)]
    report = prepare(
        DataConfig(
            train=write_jsonl(tmp_path / "d.jsonl", rows),
            shape="text",
            chunk_tokens=20,
            chunk_overlap=0,
            val_fraction=0.2,
            test_fraction=0.2,
            dedup={"near": False},
        ),
        0,
        tmp_path / "out",
        tokenizer=lambda: tok,
    )
    docs = {s: set(pq.read_table(tmp_path / "out" / f"{s}.parquet").column("doc").to_pylist()) for s in report["rows"]}
    assert len(docs["test"]) == 2 and len(docs["val"]) == 2 and len(docs["train"]) == 6
    assert not (docs["train"] & docs["test"]) and not (docs["train"] & docs["val"])


@pytest.mark.parametrize(
    "messages, problem",
    [
        ([{"role": "user", "content": "hi"}], "no assistant turn"),
        ([{"role": "assistant", "content": "hi"}], "roles out of order at message 0: expected user, got assistant"),
        (
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}],
            r"message 1 \(assistant\) is empty",
        ),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "roles out of order at message 1"),
        ([{"role": "robot", "content": "a"}], "role 'robot'; allowed"),
    ],
)
def test_bad_conversations(messages, problem):
    with pytest.raises(RowProblem, match=problem):
        conversation(messages, "messages")


def test_preference_without_a_shared_prompt():
    with pytest.raises(RowProblem, match="do not share a prompt"):
        split_shared_prefix("\n\nHuman: a\n\nAssistant: b", "\n\nHuman: c\n\nAssistant: d")
    with pytest.raises(RowProblem, match="same reply"):
        split_shared_prefix("\n\nHuman: a\n\nAssistant: b", "\n\nHuman: a\n\nAssistant: b")


def test_a_prompt_chosen_rejected_row_with_the_same_reply_names_its_line(tmp_path):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "same ", "rejected": "same"}]
    path = write_jsonl(tmp_path / "p.jsonl", rows * 3)
    with pytest.raises(TunesmithError, match=r"p\.jsonl:2: chosen and rejected are the same reply"):
        run(tmp_path, train=path)


def test_bad_rows_are_errors_with_line_or_skipped_and_counted(tmp_path):
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    rows = [chat] * 1 + [
        {"messages": [{"role": "user", "content": "unanswered"}]},
        {"prompt": "p", "chosen": "a", "rejected": "b"},  # another shape in the same file
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]},
    ]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    with pytest.raises(TunesmithError, match=r"c\.jsonl:2: no assistant turn to learn from"):
        run(tmp_path, train=path)
    report, kept = run(tmp_path, train=path, on_error="skip")
    assert len(kept) == 1
    assert report["files"]["train"]["steps"][1]["removed"] == {
        "no assistant turn to learn from": 1,
        "missing field 'messages'": 1,
        "message N (assistant) is empty": 1,
    }
    mixed = write_jsonl(tmp_path / "m.jsonl", [rows[0], rows[2]])
    with pytest.raises(
        TunesmithError,
        match=r"m\.jsonl:2: missing field 'messages' \(this file's rows are chat; this row looks like preference\)",
    ):
        run(tmp_path, train=mixed)


def test_binary_file_and_unknown_shape(tmp_path):
    binary = tmp_path / "x.csv"
    binary.write_bytes(b"text,label\n\x00\x01\x02")
    with pytest.raises(TunesmithError, match="binary file"):
        run(tmp_path, train=str(binary))
    odd = write_jsonl(tmp_path / "o.jsonl", [{"foo": 1, "bar": 2}])
    with pytest.raises(TunesmithError, match=r"cannot tell the data shape from the fields \['foo', 'bar'\]"):
        run(tmp_path, train=odd)


@pytest.mark.parametrize(
    "given, name",
    [(0, "0"), ("0", "0"), (0.0, "0"), ("0.0", "0"), ("1.0", "1"), (" 1 ", "1"), ("0.50", "0.5"), ("pos", "pos")],
)
def test_labels_equal_as_numbers_are_one_class(given, name):
    assert label_name(given, "label") == name


@pytest.mark.parametrize("given", [None, float("nan"), "NaN", "nan", "", "  ", "null", "None", [1], {"a": 1}])
def test_empty_nan_and_none_labels_are_malformed_rows(given):
    with pytest.raises(RowProblem, match="label"):
        label_name(given, "label")


def test_mixed_numeric_labels_prepare_as_two_classes(tmp_path):
    rows = [{"text": f"example number {i} of the set", "label": [0, 0.0, "1", "1.0"][i % 4]} for i in range(40)]
    report, _ = run(tmp_path, train=write_jsonl(tmp_path / "d.jsonl", rows), dedup={"near": False})
    assert report["label_names"] == ["0", "1"] and report["labels"]["train"] == {"0": 20, "1": 20}

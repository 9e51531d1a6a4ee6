"""The bad-input catalogue: every case runs the CLI as a user would, and asserts the exit code, a message that
names the file/line/key/run and what is allowed, no traceback, and that nothing the user owns changed (every
file that existed before has the same bytes after, and every registry row that existed is unchanged)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import tiny_config
from tunesmith import api
from tunesmith.cli import app

runner = CliRunner()


@dataclass
class Case:
    id: str
    args: list[str]  # {ws} is the workspace, {done}/{failed}/{early}/{killed} are run folders
    code: int
    says: tuple[str, ...] = ()  # each must appear in the output (whitespace ignored: the console wraps)


def csv(*rows: str) -> str:
    return "\n".join(rows) + "\n"


TWO_CLASSES = [f"text number {i} about {'cats' if i % 2 else 'dogs'} and more,{'ab'[i % 2]}" for i in range(40)]
FILES = {
    "nan_label.csv": csv("text,label", "good film,1", "bad film,NaN", *TWO_CLASSES[:10]),
    "nan_label.jsonl": '{"text": "good", "label": 1}\n{"text": "bad", "label": NaN}\n',
    "numeric_labels.csv": csv(
        "text,label",
        *[f"sample text {i} {'x' * (i % 7)} {'y' * (i % 5)},{['0', '0.0', '1', '1.0'][i % 4]}" for i in range(40)],
    ),
    "topic.csv": csv("text,category", *TWO_CLASSES),
    "broken.jsonl": '{"text": "fine", "label": "a"}\n{"text": "oops", "label": \n',
    "not_a_list.json": '{"a": 1, "b": 2}',
    "short_row.csv": csv("text,label", "one,a", "two"),
    "dup_header.csv": csv("text,text", "a,b"),
    "binary.csv": "",
    "data.xyz": "text,label\n",
    "header_only.csv": csv("text,label"),
    "huge_field.csv": csv("text,label", *TWO_CLASSES, '"' + "word " * 250_000 + '",a'),
    "fake.parquet": "this is not parquet",
    "bad_role.jsonl": json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}) + "\n",
    "same_reply.jsonl": json.dumps({"prompt": "hi", "chosen": "hello", "rejected": "hello"}) + "\n",
    "empty_reply.jsonl": json.dumps({"prompt": "hi", "chosen": "hello", "rejected": "  "}) + "\n",
    "empty_feedback.jsonl": json.dumps({"prompt": "hi", "completion": "", "label": True}) + "\n",
    "one_class.csv": csv("text,label", *[f"only text {i} here,same" for i in range(30)]),
    "rare_class.csv": csv("text,label", *TWO_CLASSES, "a lonely example,c"),
    "split_bad.csv": csv("text,label,part", "x one,a,train", "y two,b,holdout"),
    "bad_regex_filter.yaml": "patterns: ['(unclosed']\n",
    "reviews.tsv": "sentence\tlabel\na fine film\t1\na dull film\t0\n",
    "unseen.csv": csv("text,label", *TWO_CLASSES),
    "unseen_test.csv": csv("text,label", "a new one here,z", "another new one,z"),
    "dupes.csv": csv("text,label", *["cats purr,a", "dogs bark,b", "cats purr softly,a", "dogs bark loudly,b"] * 10),
    "lines.txt": "good film\n\nbad film\n",
}
CONFIGS = {
    "syntax.yaml": "model: x\ndata: {train: a.csv\n",
    "list.yaml": "- a\n- b\n",
    "typo.yaml": {"train": {"epoch": 3}},
    "lr.yaml": {"train": {"lr": "fast"}},
    "method.yaml": {"method": "clasify"},
    "section.yaml": {"dpo": {"beta": 0.1}},
    "packing.yaml": {"train": {"packing": True}},
    "stop_metric.yaml": {"train": {"early_stopping": {"metric": "bleu"}}},
    "fractions.yaml": {"data": {"val_fraction": 0.5, "test_fraction": 0.45}},
    "max_length.yaml": {"train": {"max_length": 4096}},
    "alias.yaml": {"model": "minilm-l7"},
    "model_folder.yaml": {"model": "./no/such/model"},
    "stop_no_val.yaml": {"data": {"val_fraction": 0}, "train": {"early_stopping": {}}},
    "dedup_to_nothing.yaml": {"data": {"train": "{user}/dupes.csv", "text": "text"}},
    "no_test.yaml": {"data": {"test_fraction": 0}},
    "bad_encoding.yaml": {"data": {"encoding": "klingon-8"}},
    "output_dir.yaml": {"output_dir": "{user}/a_file/runs"},
}


def prep_config(ws: Path, name: str, **data) -> str:
    """A data-only config for `prepare` (its model is never loaded for classify data)."""
    path = ws / "user" / f"prep-{name}.yaml"
    path.write_text(yaml.safe_dump({"model": "minilm-l6", "data": {"dedup": {"near": False}} | data}))
    return str(path)


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_model, fixtures) -> Path:
    """The user's folder (data files, configs) and runs/ with a done run, a failed run of the same name after
    it, a run that failed before its data, and a run whose process was killed."""
    ws = tmp_path_factory.mktemp("bad-input")
    user = ws / "user"
    user.mkdir()
    for name, text in FILES.items():
        (user / name).write_text(text)
    (user / "binary.csv").write_bytes(b"text,label\n\x00\x01\x02binary\n")
    (user / "a_file").write_text("a file where a folder should be")
    base = tiny_config(tiny_model, fixtures / "sst2_train.tsv", ws)
    for name, change in CONFIGS.items():
        if isinstance(change, str):
            (user / name).write_text(change)
            continue
        cfg = json.loads(json.dumps(base))
        for key, value in change.items():
            cfg[key] = cfg[key] | value if isinstance(value, dict) and key in cfg else value
        (user / name).write_text(yaml.safe_dump(cfg).replace("{user}", str(user)))
    (user / "good.yaml").write_text(yaml.safe_dump(base | {"train": base["train"] | {"epochs": 1}}))
    done = api.train(user / "good.yaml", quiet=True)
    (user / "wrong_text.yaml").write_text(yaml.safe_dump(base | {"data": base["data"] | {"text": "sentense"}}))
    assert runner.invoke(app, ["train", str(user / "wrong_text.yaml")]).exit_code == 2
    early = max((ws / "runs").glob("tiny-*"), key=lambda p: p.stat().st_mtime)
    failed = _failed_after_data(user, base)
    killed = _killed_run(ws, done)
    (user / "existing_out").mkdir()
    (user / "existing_out" / "my_notes.txt").write_text("mine")
    (user / "old_prep").mkdir()
    (user / "old_prep" / "data_report.json").write_text("{}")
    (user / "old_prep" / "train.csv").write_text("text,label\nmine,a\n")
    (user / "inputs.txt").write_text("a fine film\nawful\n")
    return ws, {"done": done, "early": early, "failed": failed, "killed": killed}


def _failed_after_data(user: Path, base: dict) -> Path:
    """A run of the same name as the done one, after it, that fails once its data is prepared (no test split)."""
    result = runner.invoke(app, ["train", str(user / "no_test.yaml")])
    assert result.exit_code == 2 and "no test rows" in result.output, result.output
    return Path(api.list_runs(base["output_dir"])[-1]["path"])


def _killed_run(ws: Path, done: Path) -> Path:
    """A registry row left `running` by a process that no longer exists (pid 2**22 - 1 is never a live pid
    here, and its creation time would not match anyway)."""
    run = ws / "runs" / "ghost-20260101-000000"
    run.mkdir()
    (run / "config.yaml").write_text((done / "config.yaml").read_text())
    with sqlite3.connect(ws / "runs" / "registry.sqlite") as con:
        con.execute(
            "INSERT INTO runs (name, status, config_hash, model, method, path, started, pid, pid_created, host) "
            "VALUES ('ghost', 'running', 'x', 'm', 'classify', ?, 0, 4194303, 0, ?)",
            (str(run), __import__("socket").gethostname()),
        )
    return run


CASES = [
    # ---- data files ----
    Case(
        "nan label (csv)",
        ["prepare", "{p:nan_label.csv}", "--out", "{ws}/o"],
        2,
        ("nan_label.csv:3", "missing label", "on_error"),
    ),
    Case(
        "nan label (jsonl)",
        ["prepare", "{p:nan_label.jsonl}", "--out", "{ws}/o"],
        2,
        ("nan_label.jsonl:2", "missing label"),
    ),
    Case(
        "numeric labels are one class each",
        ["prepare", "{p:numeric_labels.csv}", "--out", "{ws}/num"],
        0,
        ("prepared splits",),
    ),
    Case(
        "label column missing",
        ["prepare", "{p:topic.csv,label=topic}", "--out", "{ws}/o"],
        2,
        ("'topic' (data.label) not found", "the columns are: text, category"),
    ),
    Case(
        "text column typo",
        ["prepare", "{p:topic.csv,text=txt}", "--out", "{ws}/o"],
        2,
        ("'txt' (data.text) not found", "Did you mean 'text'"),
    ),
    Case(
        "invalid JSON line",
        ["prepare", "{p:broken.jsonl}", "--out", "{ws}/o"],
        2,
        ("broken.jsonl:2", "invalid JSON", "data.on_error: skip"),
    ),
    Case(
        "JSON that is not a list",
        ["prepare", "{p:not_a_list.json}", "--out", "{ws}/o"],
        2,
        ("not_a_list.json", "expected a list of objects"),
    ),
    Case(
        "CSV row with too few fields",
        ["prepare", "{p:short_row.csv}", "--out", "{ws}/o"],
        2,
        ("short_row.csv:3", "expected 2 fields"),
    ),
    Case(
        "CSV header repeats a name",
        ["prepare", "{p:dup_header.csv}", "--out", "{ws}/o"],
        2,
        ("dup_header.csv:1", "repeats a column name"),
    ),
    Case("binary file", ["prepare", "{p:binary.csv}", "--out", "{ws}/o"], 2, ("binary.csv", "binary file")),
    Case(
        "unknown suffix",
        ["prepare", "{p:data.xyz}", "--out", "{ws}/o"],
        2,
        ("data.xyz", "set data.format to one of", "csv"),
    ),
    Case(
        "data file missing",
        ["prepare", "{p:nothing_here.csv}", "--out", "{ws}/o"],
        2,
        ("data file not found", "nothing_here.csv"),
    ),
    Case("header only", ["prepare", "{p:header_only.csv}", "--out", "{ws}/o"], 2, ("header_only.csv", "no rows left")),
    Case("a 1.25 MB CSV field", ["prepare", "{p:huge_field.csv}", "--out", "{ws}/huge"], 0, ("prepared splits",)),
    Case(
        "not Parquet",
        ["prepare", "{p:fake.parquet}", "--out", "{ws}/o"],
        2,
        ("fake.parquet", "not a readable Parquet file"),
    ),
    Case(
        "chat role not allowed",
        ["prepare", "{p:bad_role.jsonl}", "--out", "{ws}/o"],
        2,
        ("bad_role.jsonl:1", "role 'wizard'", "allowed: system, user, assistant"),
    ),
    Case(
        "chosen equals rejected",
        ["prepare", "{p:same_reply.jsonl}", "--out", "{ws}/o"],
        2,
        ("same_reply.jsonl:1", "the same reply"),
    ),
    Case(
        "an empty preference reply",
        ["prepare", "{p:empty_reply.jsonl}", "--out", "{ws}/o"],
        2,
        ("empty_reply.jsonl:1", "empty rejected response"),
    ),
    Case(
        "an empty feedback completion",
        ["prepare", "{p:empty_feedback.jsonl}", "--out", "{ws}/o"],
        2,
        ("empty_feedback.jsonl:1", "empty"),
    ),
    Case(
        "a single class",
        ["prepare", "{p:one_class.csv}", "--out", "{ws}/o"],
        2,
        ("single class", "'same'", "at least two"),
    ),
    Case(
        "a class with one row",
        ["prepare", "{p:rare_class.csv}", "--out", "{ws}/o"],
        2,
        ("fewer than 2 training rows", "'c' (1 row)"),
    ),
    Case(
        "data.sample above the data",
        ["prepare", "{p:topic.csv,label=category,sample=500}", "--out", "{ws}/o"],
        2,
        ("data.sample", "500", "lower data.sample"),
    ),
    Case(
        "split column missing",
        ["prepare", "{p:topic.csv,label=category,split_column=part}", "--out", "{ws}/o"],
        2,
        ("'part' (data.split_column) not found", "the columns are"),
    ),
    Case(
        "split column value",
        ["prepare", "{p:split_bad.csv,split_column=part}", "--out", "{ws}/o"],
        2,
        ("split_bad.csv:3", "'holdout'", "not one of train, val, test"),
    ),
    Case(
        "test labels unseen in train",
        ["prepare", "{p:unseen.csv,test=unseen_test.csv}", "--out", "{ws}/o"],
        2,
        ("never occur in train", "'z'"),
    ),
    Case("unknown encoding", ["train", "{u}/bad_encoding.yaml"], 2, ("unknown encoding 'klingon-8'", "data.encoding")),
    Case(
        "dedup leaves no test rows", ["train", "{u}/dedup_to_nothing.yaml"], 2, ("no test rows", "data.test_fraction")
    ),
    # ---- configs ----
    Case("YAML syntax", ["train", "{u}/syntax.yaml"], 2, ("syntax.yaml line", "not valid YAML")),
    Case("YAML not a mapping", ["train", "{u}/list.yaml"], 2, ("list.yaml", "expected a mapping of keys")),
    Case(
        "unknown key, close match",
        ["train", "{u}/typo.yaml"],
        2,
        ("train.epoch: unknown key; did you mean train.epochs?",),
    ),
    Case("bad value", ["train", "{u}/lr.yaml"], 2, ("train.lr", "'fast'")),
    Case("unknown method", ["train", "{u}/method.yaml"], 2, ("method:", "clasify", "classify")),
    Case(
        "another method's section",
        ["train", "{u}/section.yaml"],
        2,
        ("dpo: a section of method dpo, but method is classify",),
    ),
    Case(
        "an option the method does not use",
        ["train", "{u}/packing.yaml"],
        2,
        ("train.packing: method classify does not use it",),
    ),
    Case(
        "early-stopping metric",
        ["train", "{u}/stop_metric.yaml"],
        2,
        ("train.early_stopping.metric", "'bleu'", "choose one of macro_f1"),
    ),
    Case(
        "fractions leave no training data",
        ["train", "{u}/fractions.yaml"],
        2,
        ("val_fraction + data.test_fraction", "10%"),
    ),
    Case(
        "max_length above the position limit",
        ["train", "{u}/max_length.yaml"],
        2,
        ("train.max_length: 4096", "at most 128"),
    ),
    Case("alias typo", ["train", "{u}/alias.yaml"], 2, ("'minilm-l7'", "did you mean the alias 'minilm-l6'")),
    Case("model folder missing", ["train", "{u}/model_folder.yaml"], 2, ("model folder not found",)),
    Case("config file missing", ["train", "{u}/nope.yaml"], 2, ("config file not found", "nope.yaml")),
    Case(
        "output_dir cannot be created",
        ["train", "{u}/output_dir.yaml"],
        2,
        ("output_dir", "a_file/runs", "cannot create"),
    ),
    Case(
        "early stopping without validation",
        ["train", "{u}/stop_no_val.yaml"],
        2,
        ("train.early_stopping needs validation rows", "data.val_fraction"),
    ),
    Case("no test split", ["train", "{u}/no_test.yaml"], 2, ("no test rows", "data.test")),
    Case("--set without =", ["train", "{u}/good.yaml", "--set", "train.lr"], 2, ("--set 'train.lr'", "KEY=VALUE")),
    # ---- CLI arguments ----
    Case("predict an empty text", ["predict", "{done}", ""], 2, ("empty",)),
    Case(
        "predict --file with a blank line",
        ["predict", "{done}", "--file", "{u}/lines.txt"],
        2,
        ("lines.txt:2", "blank line"),
    ),
    Case("predict --file missing", ["predict", "{done}", "--file", "{u}/none.txt"], 2, ("file not found", "none.txt")),
    Case(
        "eval --on-error value",
        ["eval", "{done}", "--data", "{u}/topic.csv", "--on-error", "maybe"],
        2,
        ("--on-error must be fail or skip", "'maybe'"),
    ),
    Case(
        "eval --format value",
        ["eval", "{done}", "--data", "{u}/topic.csv", "--format", "xml"],
        2,
        ("--format must be one of", "csv", "lines", "'xml'"),
    ),  # fmt: skip
    Case("train with nothing", ["train"], 2, ("give a CONFIG file, or --resume RUN",)),
    Case(
        "prepare --out a non-empty folder",
        ["prepare", "{p:topic.csv,label=category}", "--out", "{u}/existing_out"],
        2,
        ("existing_out", "not empty", "--overwrite"),
    ),
    Case(
        "prepare --overwrite a folder it did not write",
        ["prepare", "{p:topic.csv,label=category}", "--out", "{u}/old_prep", "--overwrite"],
        2,
        ("old_prep", "train.csv", "nothing was changed"),
    ),
    Case(
        "prepare --out a file",
        ["prepare", "{p:topic.csv,label=category}", "--out", "{u}/a_file"],
        2,
        ("a_file", "not a folder"),
    ),
    Case(
        "generate with a classifier", ["generate", "{done}", "hello"], 2, ("has no text generator", "tunesmith predict")
    ),
    # ---- run states ----
    Case(
        "predict by name: the latest done run, not the failed one after it",
        ["predict", "tiny", "a fine film", "--json"],
        0,
        ('"label"',),
    ),
    Case("predict a failed run", ["predict", "{failed}", "a fine film"], 2, ("is failed", "no test rows", "runs show")),
    Case("predict an unknown run", ["predict", "nosuchrun", "hi"], 2, ("no run 'nosuchrun'", "runs list")),
    Case("eval a failed run", ["eval", "{failed}", "--data", "{u}/topic.csv"], 2, ("is failed",)),
    Case(
        "resume a done run",
        ["train", "--resume", "{done}"],
        2,
        ("the run is done", "nothing to resume", "tunesmith train"),
    ),
    Case(
        "resume a run that failed before its data",
        ["train", "--resume", "{early}"],
        2,
        ("stopped before its data was prepared", "tunesmith train"),
    ),
    Case("resume an unknown run", ["train", "--resume", "nosuchrun"], 2, ("no run 'nosuchrun'",)),
    Case("predict a killed run", ["predict", "{killed}", "hi"], 2, ("is killed", "--resume")),
    Case("runs show an unknown run", ["runs", "show", "nosuchrun", "--dir", "{ws}/runs"], 2, ("no run 'nosuchrun'",)),
    Case(
        "export a classifier to GGUF",
        ["export", "{done}", "--format", "gguf"],
        2,
        ("cannot export a classifier", "GGUF holds causal LMs", "onnx, int8, merged"),
    ),  # fmt: skip
    Case(
        "export to an unknown format",
        ["export", "{done}", "--format", "tflite"],
        2,
        ("'tflite' is not one of onnx, int8, gguf, merged",),
    ),  # fmt: skip
    Case(
        "predict with an export not made",
        ["predict", "{done}", "hi", "--format", "onnx"],
        2,
        ("has no onnx export", "tunesmith export"),
    ),  # fmt: skip
    Case("export a failed run", ["export", "{failed}", "--format", "onnx"], 2, ("is failed",)),
    Case(
        "a filter regex that does not compile",
        ["generate", "{done}", "hi", "--filter", "{u}/bad_regex_filter.yaml"],
        2,
        ("bad_regex_filter.yaml", "patterns[0]", "does not compile"),
    ),
    Case(
        "audit with a slice column that does not exist",
        ["audit", "{done}", "--data", "{u}/reviews.tsv", "--slice-column", "region"],
        2,
        ("reviews.tsv", "no column 'region'", "its columns are sentence, label"),
    ),
]


def _expand(arg: str, ws: Path, runs: dict) -> str:
    user = ws / "user"
    if arg.startswith("{p:"):
        name, *opts = arg[3:-1].split(",")
        data = dict(o.split("=", 1) for o in opts)
        for key in ("test",):
            if key in data:
                data[key] = str(user / data[key])
        if "sample" in data:
            data["sample"] = int(data["sample"])
        return prep_config(ws, name, train=str(user / name), **data)
    return arg.format(ws=ws, u=user, **{k: str(v) for k, v in runs.items()})


def _owned(ws: Path) -> tuple[dict, list]:
    """Checksums of every file the user has, and every registry row."""
    files = {
        str(p.relative_to(ws)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(ws.rglob("*"))
        if p.is_file() and p.name != "registry.sqlite"
    }
    with sqlite3.connect(ws / "runs" / "registry.sqlite") as con:
        rows = con.execute("SELECT * FROM runs ORDER BY id").fetchall()
    return files, rows


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, ws, monkeypatch):
    ws, runs = ws
    monkeypatch.chdir(ws)
    monkeypatch.setenv("TUNESMITH_RUNS", str(ws / "runs"))
    args = [_expand(a, ws, runs) for a in case.args]
    before_files, before_rows = _owned(ws)
    result = runner.invoke(app, args)
    flat = "".join(result.output.split())
    assert result.exit_code == case.code, result.output
    assert "Traceback" not in result.output and (result.exception is None or isinstance(result.exception, SystemExit))
    for text in case.says:
        assert "".join(text.split()) in flat, f"{text!r} not in:\n{result.output}"
    after_files, after_rows = _owned(ws)
    changed = {k for k, v in before_files.items() if after_files.get(k) != v}
    assert not changed, f"changed or deleted: {sorted(changed)}"
    assert after_rows[: len(before_rows)] == before_rows


def test_there_are_at_least_forty_cases():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)

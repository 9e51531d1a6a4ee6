"""The method contract: every method is declared in methods/ alone, and its config is checked at load time."""

import re
from pathlib import Path

import pytest

from tunesmith import methods
from tunesmith.config import SHAPES, config_from_dict
from tunesmith.errors import TunesmithError

SRC = Path(methods.__file__).parents[1]


def test_no_method_name_occurs_outside_methods():
    """config, api, cli, eval, report, infer... dispatch through the registry: no method name appears as a string
    (prose may say "a reward model"). A shape that shares its name with a method ("classify") is data vocabulary:
    data/ and config.SHAPES may name it."""
    names = set(methods.registry())
    assert {"classify", "sft", "pretrain", "dpo", "kto", "reward"} <= names
    word = re.compile(r"[\"'](" + "|".join(sorted(names)) + r")[\"']")
    found = []
    for path in sorted(SRC.rglob("*")):
        if path.suffix not in (".py", ".j2") or "methods" in path.relative_to(SRC).parts:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for m in word.finditer(line):
                shape_vocabulary = m.group(1) in SHAPES and (path.parent.name == "data" or line.startswith("SHAPES ="))
                if not shape_vocabulary:
                    found.append(f"{path.relative_to(SRC)}:{n}: {line.strip()}")
    assert not found, "method names outside methods/:\n" + "\n".join(found)


def test_every_method_declares_what_the_rest_reads():
    for m in methods.registry().values():
        assert m.shapes and set(m.shapes) <= set(SHAPES) and m.scores and m.val_metrics and m.headline
        assert set(m.headline) <= {key for key, _ in m.scores}
        assert all(o.split(".")[0] in ("train", "eval", "continual", "data") for o in m.options)


def cfg(**extra):
    return {"model": "minilm-l6", "data": {"train": "x.csv"}} | extra


def test_early_stopping_defaults_to_the_methods_first_validation_metric():
    for name, first in (("classify", "macro_f1"), ("sft", "loss")):
        c = config_from_dict(cfg(method=name, train={"early_stopping": {}}))
        assert c.train.early_stopping.metric == first
    with pytest.raises(TunesmithError, match="'macro_f1' is not a validation metric of method sft; choose one of loss"):
        config_from_dict(cfg(method="sft", train={"early_stopping": {"metric": "macro_f1"}}))


def test_an_option_the_method_does_not_use_is_an_error_naming_the_key():
    with pytest.raises(
        TunesmithError, match=r"train.packing: method classify does not use it \(it is for distill-lm, sft, pretrain"
    ):
        config_from_dict(cfg(train={"packing": True}))
    with pytest.raises(TunesmithError, match="eval.calibrate: method sft does not use it"):
        config_from_dict(cfg(method="sft", eval={"calibrate": False}))
    written_out = config_from_dict(cfg()).model_dump(mode="json")  # a resolved config holds every default
    assert config_from_dict(written_out).train.packing is False


def test_unknown_method_and_unknown_top_level_key():
    with pytest.raises(TunesmithError, match="method: unknown method 'sfft'; the methods are: .*sft"):
        config_from_dict(cfg(method="sfft"))
    with pytest.raises(TunesmithError, match="nmae: unknown key"):
        config_from_dict(cfg(nmae="x"))

"""Transfer learning in stages: a run's `stages:` are trained first, in order, each from the weights of the stage
before, and the run itself from the last one. A stage is a run of its own inside the run's folder
(stages/<n>-<name>/: config.yaml, data/, checkpoints, model/, eval.json), so resume picks up the stage it was in.

Between two stages the weights pass as a plain transformers folder (start/ in the later stage's folder): a causal
LM's saved model/ as it is; a classifier with its LoRA merged, and with its head dropped (a fresh head is built
over the new labels) unless the labels are the same or the later stage says keep_head.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from tunesmith.errors import TunesmithError
from tunesmith.files import staged_dir

STAGE_KEYS = ("name", "data", "method", "train", "eval", "lora", "keep_head")  # and the stage method's section


def stage_configs(cfg) -> list:
    """The RunConfig of every stage: the run's config with the stage's keys over it (train and eval merged)."""
    from tunesmith import methods
    from tunesmith.config import RunConfig, _lines, unknown_key

    out = []
    base = cfg.model_dump(exclude={"stages", "keep_head", "continual", cfg.method})
    for i, raw in enumerate(cfg.stages):
        where = f"stages[{i}]"
        if not isinstance(raw, dict) or "name" not in raw or "data" not in raw:
            raise ValueError(f"{where}: a stage is a mapping with at least name and data (then method, train, ...)")
        stage = dict(raw)
        method = stage.get("method", cfg.method)
        for key in stage:
            if key not in STAGE_KEYS and key != method:
                raise ValueError(unknown_key(f"{where}.{key}", [*STAGE_KEYS, method]))
        own = (cfg.__pydantic_extra__ or {}).get(cfg.method) if method == cfg.method else None
        section = stage.get(method, own.model_dump() if hasattr(own, "model_dump") else own)
        merged = base | {
            "name": f"{cfg.name}-{stage['name']}",
            "method": method,
            "data": stage["data"],
            "train": base["train"] | stage.get("train", {}),
            "eval": base["eval"] | stage.get("eval", {}),
            "lora": stage.get("lora", base["lora"]),
            "keep_head": stage.get("keep_head", False),
        }
        if section is not None:
            merged[method] = section
        try:
            out.append(RunConfig.model_validate(merged))
        except ValidationError as err:
            raise ValueError("\n  ".join(_lines(err, prefix=f"{where} ({stage['name']})"))) from None
        if method not in methods.registry():
            raise ValueError(f"{where}.method: unknown method {method!r}")
    return out


def stage_dir(run_dir: Path, i: int, cfg) -> Path:
    return run_dir / "stages" / f"{i + 1}-{cfg.name}"


def start_folder(prev: Path, out: Path, labels: list[str] | None, keep_head: bool, method: str) -> Path:
    """The weights a stage starts from, as a folder its method builds from (see the module docstring)."""
    from tunesmith.models.saved import CAUSAL_LM, CLASSIFIER, load_classifier, read_meta

    meta = read_meta(prev / "model")
    if meta["kind"] == CAUSAL_LM:
        return prev / "model"
    if meta["kind"] != CLASSIFIER or labels is None:
        raise TunesmithError(
            f"stage {prev.name} trained a {meta['kind']}, and the stage after it ({method}) needs a causal LM: "
            f"a classifier's weights cannot start a text generator; put classifier stages last"
        )
    if out.is_dir() and (out / "config.json").is_file():  # made before an interruption
        return out
    keep = keep_head or labels == meta["labels"]
    if keep and len(labels) != len(meta["labels"]):
        raise TunesmithError(
            f"keep_head: stage {prev.name} has {len(meta['labels'])} labels and this one {len(labels)}; a head is "
            f"kept only over as many labels (drop keep_head and a fresh head is trained)"
        )
    model, tokenizer, _ = load_classifier(prev / "model")
    if meta["lora"]:
        model = model.merge_and_unload()
    body = model if keep else getattr(model, "encoder", None) or model.base_model
    with staged_dir(out, replace=True, fault="model") as tmp:
        body.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def reports(run_dir: Path, cfgs: list) -> list[dict]:
    """eval.json's "stages": what each stage scored on its own test rows, in order."""
    out = []
    for i, cfg in enumerate(cfgs):
        ev = json.loads((stage_dir(run_dir, i, cfg) / "eval.json").read_text())
        keep = {"name": cfg.name, "method": cfg.method, "dir": str(stage_dir(run_dir, i, cfg))}
        keep |= {k: ev[k] for k in ("test_rows", "labels") if k in ev}
        keep |= {k: _scores(ev[k]) for k in ("tuned", "baseline") if isinstance(ev.get(k), dict)}
        out.append(keep)
    return out


def _scores(section: dict) -> dict:
    return {k: v for k, v in section.items() if isinstance(v, int | float)}

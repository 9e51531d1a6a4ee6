"""The Python API: the same verbs as the CLI (train, predict, evaluate, runs, models), as plain functions."""

from __future__ import annotations

import json
import shutil
import tempfile
import traceback
import warnings
from pathlib import Path

import yaml

from tunesmith import zoo
from tunesmith.config import DataConfig, RunConfig, config_from_dict, dump_config, load_config
from tunesmith.data.classify import Split, read_prepared, read_split
from tunesmith.data.prepare import Preparer, prepare
from tunesmith.errors import ReportNotWritten, TunesmithError
from tunesmith.eval.calibration import softmax
from tunesmith.methods import classify, sft
from tunesmith.runs import Registry, config_hash, find_run_dir, new_run_dir, write_json

METHODS = {"classify": classify.run, "sft": sft.run, "pretrain": sft.run}
SHAPES = {"classify": ("classify",), "sft": ("chat", "instruction"), "pretrain": ("text",)}  # what each trains on


def train(
    config: str | Path | RunConfig | dict,
    overrides: list[str] | None = None,
    *,
    resume: str | Path | None = None,
    quiet: bool = False,
) -> Path:
    """Fine-tune as the config says and return the run directory (config.yaml, data/, model/, eval.json, report.html).

    With `resume`, continue the run in that directory from its latest checkpoint (its own config.yaml and data).
    """
    if resume is not None:
        run_dir = find_run_dir(resume)
        cfg = load_config(run_dir / "config.yaml", overrides)
    else:
        cfg = _as_config(config, overrides)
        run_dir = new_run_dir(cfg.output_dir, cfg.name)
    registry = Registry(run_dir.parent)
    cfg_text = dump_config(cfg)
    registry.start(run_dir, cfg.name, config_hash(cfg_text), cfg.model, cfg.method)
    try:
        if resume is None:
            (run_dir / "config.yaml").write_text(cfg_text)
            zoo.resolve(cfg.model)  # fail on a missing model before reading data
            shape = prepare(cfg.data, cfg.train.seed, run_dir / "data", tokenizer=_tokenizer_of(cfg))["shape"]
            if shape not in SHAPES[cfg.method]:
                raise TunesmithError(
                    f"method {cfg.method} trains on {' or '.join(SHAPES[cfg.method])} data, but "
                    f"{cfg.data.train} holds {shape} data (see data_report.json in {run_dir / 'data'})"
                )
        report = METHODS[cfg.method](cfg, run_dir, resume=resume is not None, quiet=quiet)
        write_json(run_dir / "eval.json", report)
    except BaseException as err:
        shutil.rmtree(run_dir / "model.tmp", ignore_errors=True)
        message = str(err) if isinstance(err, TunesmithError) else f"{type(err).__name__}: {err}"
        registry.finish(run_dir, "failed", error=message)
        if not isinstance(err, TunesmithError):
            (run_dir / "error.log").write_text(traceback.format_exc())
        raise
    registry.finish(run_dir, "done", metrics=headline(report))
    _write_report(run_dir)
    return run_dir


def _write_report(run_dir: Path) -> None:
    """report.html is a view of eval.json and metrics.jsonl: if it cannot be drawn, the run (model/, eval.json) is
    still complete and stays done; the reason goes to report_error.log and a warning."""
    from tunesmith.report.html import write_report

    try:
        write_report(run_dir)
    except Exception as err:  # noqa: BLE001 - any failure to draw must not undo a finished run
        (run_dir / "report_error.log").write_text(traceback.format_exc())
        warnings.warn(
            ReportNotWritten(
                f"{run_dir / 'report.html'} was not written ({type(err).__name__}: {err}); "
                f"the model and eval.json are complete; see {run_dir / 'report_error.log'}"
            ),
            stacklevel=3,
        )


def prepare_data(
    config: str | Path | RunConfig | dict, overrides: list[str] | None = None, *, out: str | Path | None = None
) -> Path:
    """Read, check and split the data as `train` would, without training: Parquet splits and data_report.json
    in `out` (default: <output_dir>/<name>-data-<timestamp>). Returns that folder."""
    cfg = _as_config(config, overrides)
    folder = Path(out) if out else new_run_dir(cfg.output_dir, f"{cfg.name}-data")
    prepare(cfg.data, cfg.train.seed, folder, tokenizer=_tokenizer_of(cfg))
    return folder


def _tokenizer_of(cfg: RunConfig):
    """Loaded only if the data needs it (token chunks of raw text)."""

    def load():
        from transformers import AutoTokenizer

        zoo.quiet_transformers()
        return AutoTokenizer.from_pretrained(zoo.resolve(cfg.model))

    return load


def _as_config(config, overrides) -> RunConfig:
    if isinstance(config, RunConfig):
        return config_from_dict(config.model_dump(mode="json"), "(RunConfig)", overrides)
    if isinstance(config, dict):
        return config_from_dict(config, "(dict)", overrides)
    return load_config(config, overrides)


HEADLINE = ("accuracy", "macro_f1", "perplexity")


def headline(report: dict) -> dict:
    return {
        f"{who}_{key}": round(report[who][key], 4)
        for who in ("tuned", "baseline")
        if who in report
        for key in HEADLINE
        if key in report[who]
    }


def generate(
    run: str | Path,
    prompts: list[str],
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop: list[str] | None = None,
    repetition_penalty: float = 1.0,
) -> list[str]:
    """Replies of a run's causal LM (sft/pretrain) to single-turn prompts, with its chat template; a reply ends
    before the first of the `stop` strings."""
    sampling = sft.Sampling(max_new_tokens, temperature, top_p, tuple(stop or ()), repetition_penalty)
    return sft.generate(_lm_dir(run), prompts, sampling)


def chat(
    run: str | Path,
    *,
    system: str | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.7,
    top_p: float = 0.9,
    stop: list[str] | None = None,
    repetition_penalty: float = 1.0,
) -> sft.ChatSession:
    """A conversation with a run's causal LM: `session.send(text)` yields the reply as it is generated."""
    sampling = sft.Sampling(max_new_tokens, temperature, top_p, tuple(stop or ()), repetition_penalty)
    return sft.ChatSession(_lm_dir(run), system=system, sampling=sampling)


def _lm_dir(run: str | Path) -> Path:
    model_dir = find_run_dir(run) / "model"
    meta = json.loads((model_dir / "tunesmith.json").read_text())
    if meta["method"] not in ("sft", "pretrain"):
        raise TunesmithError(f"{run}: a {meta['method']} run has no text generator; use tunesmith predict")
    return model_dir


def predict(run: str | Path, texts: list[str], *, top_k: int | None = None) -> list[dict]:
    """Label, calibrated confidence and per-label probabilities for each text."""
    model, tokenizer, meta = classify.load_model(find_run_dir(run) / "model")
    enc = classify.Encoded(tokenizer, _unlabelled(texts, meta), meta["labels"], meta["max_length"])
    probs = softmax(classify.predict_logits(model, enc), meta["temperature"])
    out = []
    for p in probs:
        ranked = sorted(zip(meta["labels"], p.tolist()), key=lambda kv: -kv[1])[: top_k or len(p)]
        out.append({"label": ranked[0][0], "confidence": ranked[0][1], "probs": dict(ranked)})
    return out


def _unlabelled(texts: list[str], meta: dict) -> Split:
    return Split(list(texts), [meta["labels"][0]] * len(texts))


def evaluate(
    run: str | Path,
    data: str | Path,
    *,
    text: str | None = None,
    label: str | None = None,
    baseline: bool = True,
    on_error: str = "fail",
    write: bool = True,
) -> dict:
    """Score a run's model (and the untuned baseline, refitted on the run's training split) on another file."""
    run_dir = find_run_dir(run)
    cfg = load_config(run_dir / "config.yaml")
    data_cfg = DataConfig(
        **(
            cfg.data.model_dump()
            | {
                "train": str(data),
                "val": None,
                "test": None,
                "format": "auto",
                "delimiter": None,
                "columns": None,
                "split_column": None,
                "on_error": on_error,
                "max_rows": None,
                "sample": None,
                "shape": "classify",
                "text": text or cfg.data.text,
                "label": label or cfg.data.label,
                "dedup": {"exact": False, "near": False},
            }
        )
    )
    with tempfile.TemporaryDirectory() as tmp:  # the same reading, cleaning and PII as training, without dedup
        pool, funnel = Preparer(data_cfg, cfg.train.seed).pool("eval", str(data), Path(tmp), None)
        split, read_report = read_split(pool), funnel.report()
    model, tokenizer, meta = classify.load_model(run_dir / "model")
    unknown = sorted(set(split.labels) - set(meta["labels"]))
    if unknown:
        raise TunesmithError(f"{data}: labels the model was not trained on: {unknown[:10]}; it knows {meta['labels']}")
    if not len(split):
        raise TunesmithError(f"{data}: no rows to evaluate")
    enc = {"test": classify.Encoded(tokenizer, split, meta["labels"], meta["max_length"])}
    if baseline:  # the baseline is refitted on the run's own training split
        train_split = read_prepared(run_dir / "data").splits["train"]
        enc["train"] = classify.Encoded(tokenizer, train_split, meta["labels"], meta["max_length"])
    cfg.eval.baseline = baseline
    report = classify.score_test(model, Path(meta["base_path"]), enc, meta["labels"], meta["temperature"], cfg)
    report |= {"data": str(data), "read": read_report}
    if write:
        write_json(run_dir / f"eval-{Path(data).stem}.json", report)
    return report


def list_runs(output_dir: str | Path = "runs") -> list[dict]:
    return Registry(output_dir).list()


def show_run(key: str, output_dir: str | Path = "runs") -> dict:
    """The registry row plus the run's eval.json and resolved config."""
    run_dir = find_run_dir(key, output_dir)
    rows = [r for r in Registry(run_dir.parent).list() if r["path"] == str(run_dir)]
    info = rows[-1] if rows else {"path": str(run_dir)}
    eval_path = run_dir / "eval.json"
    if eval_path.is_file():
        info["eval"] = json.loads(eval_path.read_text())
    info["config"] = yaml.safe_load((run_dir / "config.yaml").read_text())
    return info


def list_models() -> list[dict]:
    return zoo.list_models()


def pull_model(name: str) -> Path:
    return zoo.pull(name)


__all__ = [
    "train",
    "prepare_data",
    "predict",
    "generate",
    "chat",
    "evaluate",
    "list_runs",
    "show_run",
    "list_models",
    "pull_model",
]

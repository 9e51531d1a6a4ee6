"""The Python API: the same verbs as the CLI (train, predict, evaluate, runs, models), as plain functions."""

from __future__ import annotations

import faulthandler
import json
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import yaml

from tunesmith import methods, preflight, stages
from tunesmith.config import REPETITION_PENALTY, RunConfig, config_from_dict, dump_config, load_config
from tunesmith.continual import resolve_parent
from tunesmith.data.prepare import prepare
from tunesmith.errors import ReportNotWritten, TunesmithError
from tunesmith.files import write_json
from tunesmith.infer.classifier import Classifier
from tunesmith.infer.generator import ChatSession, Generator, Sampling
from tunesmith.infer.output_filter import OutputFilter
from tunesmith.launch import fail_on_sigterm, launch, tell_run_dir, told_run_dir
from tunesmith.models import zoo
from tunesmith.runs import Registry, config_hash, default_dir, find_run_dir, known_registries, new_run_dir
from tunesmith.train import dist
from tunesmith.train.checkpoint import list_checkpoints
from tunesmith.train.precision import pick_device
from tunesmith.tune import tune as tune  # the search: tunesmith/tune.py


def train(
    config: str | Path | RunConfig | dict,
    overrides: list[str] | None = None,
    *,
    resume: str | Path | None = None,
    continue_from: str | Path | None = None,
    quiet: bool = False,
    on_data: Callable[[dict, Path], None] | None = None,
    nproc: int = 1,
    study: str | None = None,
) -> Path | None:
    """Fine-tune as the config says and return the run directory (config.yaml, data/, model/, eval.json, report.html).

    With `resume`, continue the run in that directory from its latest checkpoint (its own config.yaml and data).
    With `continue_from` (a finished run: name, id or folder), start from that run's model and train on this
    config's data, keeping the earlier tasks by `continual.strategy` (continual learning); the run records it as
    its parent.
    `on_data(report, folder)` is called with data_report.json once the data is prepared, before training.
    With `nproc` > 1, the run trains in that many processes on this machine (Accelerate's launcher; see
    train/dist.py). In a process that such a launcher started, the call returns None on every rank but 0.
    `study` tags the registry row as a trial of that hyperparameter search (`tune`).
    """
    if nproc > 1 and not dist.launched():
        cfg = _as_config(config, overrides) if resume is None else None
        return launch(cfg, nproc, resume=resume, overrides=overrides, continue_from=continue_from, quiet=quiet)
    world = _start_world(config, overrides, resume)
    if not world.main:
        try:
            return _train_worker(world)
        finally:
            dist.close(world)
    try:
        return _train(config, overrides, resume, continue_from, quiet, on_data, world, study)
    except Exception as err:
        if world.size == 1 or isinstance(err, TunesmithError):
            raise
        raise _one_line(err, world) from None
    finally:
        if not told_run_dir():  # the other ranks wait for the run folder: None tells them there is nothing to train
            tell_run_dir(None, world)
        dist.close(world)


def _train(config, overrides, resume, continue_from, quiet, on_data, world: dist.World, study: str | None) -> Path:
    if resume is not None:
        run_dir = resumable(resume)
        cfg = load_config(run_dir / "config.yaml", overrides)
    else:
        cfg = _as_config(config, overrides)
        if continue_from is not None:
            if "continual.parent" not in methods.get(cfg.method).options:
                continuing = [m.name for m in methods.registry().values() if "continual.parent" in m.options]
                raise TunesmithError(
                    f"--continue-from: method {cfg.method} does not continue from a run; {', '.join(continuing)} do"
                )
            cfg.continual.parent = str(continue_from)
        if cfg.continual.parent is not None:  # the exact folder, checked before a run folder exists
            cfg.continual.parent = str(resolve_parent(cfg))
        run_dir = new_run_dir(cfg.output_dir, cfg.name)
    method = methods.get(cfg.method)
    registry = Registry(run_dir.parent)
    cfg_text = dump_config(cfg)
    registry.start(
        run_dir, cfg.name, config_hash(cfg_text), cfg.model, cfg.method, parent=cfg.continual.parent, study=study
    )
    try:
        staged = stages.stage_configs(cfg)
        if staged and world.size > 1:
            raise TunesmithError("stages: a run in stages trains in one process; run it without --nproc")
        if resume is None:  # every stage's data is read and checked before anything trains
            (run_dir / "config.yaml").write_text(cfg_text)
            _apply_recipe(cfg, method, run_dir, _prepare_run(cfg, run_dir, on_data))
            for i, stage in enumerate(staged):
                folder = stages.stage_dir(run_dir, i, stage)
                folder.mkdir(parents=True)
                (folder / "config.yaml").write_text(dump_config(stage))
                _prepare_run(stage, folder, None)
        tell_run_dir(run_dir, world)
        last = None
        for i, stage in enumerate(staged):  # a stage finished before an interruption is not trained again
            folder = stages.stage_dir(run_dir, i, stage)
            if not (folder / "eval.json").is_file():
                write_json(folder / "eval.json", _fit_run(stage, folder, last, quiet))
            last = folder
        report = _fit_run(cfg, run_dir, last, quiet)
        if staged:
            report["stages"] = stages.reports(run_dir, staged)
        if (run_dir / "recipe.json").is_file():
            report["recipe"] = json.loads((run_dir / "recipe.json").read_text())
        write_json(run_dir / "eval.json", report)
    except BaseException as err:
        message = (
            str(err)
            if isinstance(err, TunesmithError)
            else "interrupted (SIGINT); continue with --resume"
            if isinstance(err, KeyboardInterrupt)
            else f"{type(err).__name__}: {err}"
        )
        registry.finish(run_dir, getattr(err, "status", "failed"), error=message)  # a pruned trial: pruned
        if not isinstance(err, TunesmithError):
            (run_dir / "error.log").write_text(traceback.format_exc())
        raise
    registry.finish(run_dir, "done", metrics=headline(report, method.headline))
    _write_report(run_dir)
    return run_dir


def _start_world(config, overrides: list[str] | None, resume: str | Path | None) -> dist.World:
    """This process's place among several (a launcher started them), with its process group; one of one else."""
    if not dist.launched():
        return dist.World()
    if resume is not None:
        cfg = load_config(find_run_dir(resume) / "config.yaml", overrides)
    else:
        cfg = _as_config(config, overrides)
    world = dist.start(pick_device(cfg.train.device).type, cfg.train.distributed.timeout_s)
    fail_on_sigterm()
    faulthandler.enable(all_threads=True)  # a rank that a native library aborts prints where it was
    return world


def _train_worker(world: dist.World) -> None:
    """A rank other than 0: train the run that rank 0 prepared, then leave (rank 0 evaluates and saves)."""
    run_dir = tell_run_dir(None, world)
    if run_dir is None:  # rank 0 stopped before training and says why
        return None
    try:
        _fit_run(load_config(run_dir / "config.yaml"), run_dir, None, quiet=True)
    except dist.WorkerDone:
        return None
    except TunesmithError:
        raise
    except Exception as err:  # most often: rank 0 stopped, and this rank's next collective failed
        raise _one_line(err, world) from None
    return None


def _one_line(err: Exception, world: dist.World) -> TunesmithError:
    """A process of a multi-process run that failed: one line each, not a traceback each (rank 0's registry row and
    error.log keep it)."""
    return TunesmithError(f"process {world.rank} of {world.size} stopped: {type(err).__name__}: {err}")


def _prepare_run(cfg: RunConfig, run_dir: Path, on_data: Callable[[dict, Path], None] | None) -> dict:
    """The model is checked, the data read, cleaned, split and checked against the method: before any training.
    Returns the data report (data_report.json)."""
    preflight.check_model(cfg, zoo.resolve(cfg.model))  # before reading data
    report = prepare(cfg.data, cfg.train.seed, run_dir / "data", tokenizer=_tokenizer_of(cfg))
    if not cfg.eval.test and (run_dir / "data" / "test.parquet").is_file():  # set aside unread (tune's trials)
        (run_dir / "data" / "held_out").mkdir()
        (run_dir / "data" / "test.parquet").rename(run_dir / "data" / "held_out" / "test.parquet")
    if on_data is not None:
        on_data(report, run_dir / "data")
    preflight.check_data(cfg, methods.get(cfg.method), report, run_dir / "data")
    return report


def _apply_recipe(cfg: RunConfig, method: methods.Method, run_dir: Path, report: dict) -> None:
    """The method's defaults that depend on the prepared data (`report`: data_report.json), for the keys the config
    leaves unset; config.yaml then holds them (so a resumed run trains the same way), recipe.json says what was
    chosen, and the memory check runs again."""
    if method.recipe is None:
        return
    chosen = {key: value for key, value in method.recipe(cfg, report).items() if not _is_set(cfg, key)}
    if not chosen:
        return
    for key, value in chosen.items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    preflight.check_memory(cfg, zoo.resolve(cfg.model))
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    write_json(run_dir / "recipe.json", chosen)


def _is_set(cfg: RunConfig, key: str) -> bool:
    section, name = key.split(".")
    return name in getattr(cfg, section).model_fields_set


def _fit_run(cfg: RunConfig, run_dir: Path, after: Path | None, quiet: bool) -> dict:
    """The method's run on prepared data, from the weights of the stage `after` (when there is one), resumed
    where a checkpoint was left; returns the content of eval.json."""
    if after is not None:
        report = json.loads((run_dir / "data" / "data_report.json").read_text())
        labels = report.get("label_names") or None  # a classifier's labels; none for text, chat, ...
        cfg.model = str(stages.start_folder(after, run_dir / "start", labels, cfg.keep_head, cfg.method))
    resume = bool(list_checkpoints(run_dir / "checkpoints"))
    return {"method": cfg.method} | methods.get(cfg.method).run(cfg, run_dir, resume=resume, quiet=quiet)


def resumable(run: str | Path) -> Path:
    """The run directory, if the run can be resumed: it is not done or still running, its data was prepared,
    and it holds a complete checkpoint. Checked before the registry row is touched, so a refusal changes nothing."""
    run_dir = find_run_dir(run)
    row = Registry(run_dir.parent).row(run_dir)
    status = row["status"] if row else "unknown"
    if status == "done":
        raise TunesmithError(
            f"{run}: the run is done (model/ and eval.json are complete); nothing to resume. To train again, "
            f"start a new run: tunesmith train {run_dir / 'config.yaml'}"
        )
    if status == "running":
        raise TunesmithError(f"{run}: the run is still running (process {row['pid']} on {row['host']})")
    again = f"start it again: tunesmith train {run_dir / 'config.yaml'}"
    if not (run_dir / "data" / "data_report.json").is_file():
        raise TunesmithError(
            f"{run}: the run ({status}) stopped before its data was prepared; nothing to resume: {again}"
        )
    if not list_checkpoints(run_dir / "checkpoints") and not (run_dir / "stages").is_dir():
        raise TunesmithError(
            f"{run}: the run ({status}) stopped before its first checkpoint; nothing to resume: {again}"
        )
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
    config: str | Path | RunConfig | dict,
    overrides: list[str] | None = None,
    *,
    out: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Read, check and split the data as `train` would, without training: Parquet splits and data_report.json
    in `out` (default: <output_dir>/<name>-data-<timestamp>). Returns that folder. An existing `out` is replaced
    only with `overwrite`, and only if prepare wrote it."""
    cfg = _as_config(config, overrides)
    folder = Path(out).resolve() if out else new_run_dir(cfg.output_dir, f"{cfg.name}-data")
    prepare(cfg.data, cfg.train.seed, folder, tokenizer=_tokenizer_of(cfg), overwrite=overwrite)
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


def headline(report: dict, keys: tuple[str, ...]) -> dict:
    """The scores a run's registry row keeps: the method's headline keys, tuned and baseline."""
    return {
        f"{who}_{key}": round(report[who][key], 4)
        for who in ("tuned", "baseline")
        if who in report
        for key in keys
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
    repetition_penalty: float = REPETITION_PENALTY,
    fmt: str | None = None,
    output_filter: str | Path | OutputFilter | None = None,
) -> list[str]:
    """Replies of a run's causal LM (or its `fmt` export) to single-turn prompts, with its chat template; a reply
    ends before the first of the `stop` strings. Under `output_filter` a refused reply is the filter's refusal."""
    sampling = Sampling(max_new_tokens, temperature, top_p, tuple(stop or ()), repetition_penalty)
    screen = _filter(output_filter)
    replies = Generator.load(run, fmt).replies([[{"role": "user", "content": p}] for p in prompts], sampling)
    return [v.text for v in screen.check(replies)] if screen else replies


def chat(
    run: str | Path,
    *,
    system: str | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.7,
    top_p: float = 0.9,
    stop: list[str] | None = None,
    repetition_penalty: float = REPETITION_PENALTY,
    fmt: str | None = None,
    output_filter: str | Path | OutputFilter | None = None,
) -> ChatSession:
    """A conversation with a run's causal LM (or its `fmt` export): `session.send(text)` yields the reply as it is
    generated (whole, once it has passed, under `output_filter`)."""
    sampling = Sampling(max_new_tokens, temperature, top_p, tuple(stop or ()), repetition_penalty)
    return ChatSession(Generator.load(run, fmt), system=system, sampling=sampling, output_filter=_filter(output_filter))


def predict(run: str | Path, texts: list[str], *, top_k: int | None = None, fmt: str | None = None) -> list[dict]:
    """Label, calibrated confidence and per-label probabilities for each text, from the run's model or its `fmt`
    export."""
    return Classifier.load(run, fmt).predict(texts, top_k=top_k)


def export(
    run: str | Path,
    fmt: str,
    *,
    gguf_type: str = "q8_0",
    min_agreement: float | None = None,
    output_dir: str | Path | None = None,
) -> dict:
    """The run's model as onnx, int8, gguf or merged, in run_dir/exports/FORMAT, checked against the model
    (see tunesmith.release.export); returns what export.json records."""
    from tunesmith.release.export import export as write

    out = write(run, fmt, gguf_type=gguf_type, min_agreement=min_agreement, output_dir=output_dir)
    _write_report(Path(out["run"]))
    return out


def audit(
    run: str | Path,
    data: str | Path | None = None,
    *,
    slice_column: str | None = None,
    sensitive: str | None = None,
    gap: float = 0.05,
    rows: int = 1000,
    seed: int = 0,
) -> dict:
    """Slices, data warnings, robustness to perturbations and (with `sensitive`) group gaps of a classifier run,
    on its test split or on `data`; written to run_dir/audit.json and report.html (see tunesmith.release.audit)."""
    from tunesmith.release.audit import audit as run_audit

    out = run_audit(run, data, slice_column=slice_column, sensitive=sensitive, gap=gap, rows=rows, seed=seed)
    _write_report(Path(out["run"]))
    return out


def evaluate(
    run: str | Path,
    data: str | Path,
    *,
    text: str | None = None,
    label: str | None = None,
    format: str | None = None,
    delimiter: str | None = None,
    baseline: bool = True,
    on_error: str = "fail",
    write: bool = True,
) -> dict:
    """Score a run's model (and the untuned baseline) on another file, as its method scores a test set; the file
    is read with the run's reading options unless `format`, `delimiter`, `text` or `label` say otherwise."""
    run_dir = find_run_dir(run, done=True)
    method = methods.get(load_config(run_dir / "config.yaml").method)
    if method.evaluate is None:
        raise TunesmithError(
            f"{run}: a {method.name} run cannot be scored on another file yet; its eval.json holds its test-set scores"
        )
    report = method.evaluate(
        run_dir, data, text=text, label=label, fmt=format, delimiter=delimiter,
        baseline=baseline, on_error=on_error, write=write,
    )  # fmt: skip
    return {"method": method.name} | report


def list_methods() -> list[dict]:
    """Every method: its name, what it does, the data shapes it trains on and its own config keys."""
    return [
        {
            "name": m.name,
            "summary": m.summary,
            "shapes": list(m.shapes),
            "section": {m.name: _defaults(m.section)} if m.section else {},
            "val_metrics": list(m.val_metrics),
            "options": sorted(m.options),
        }
        for m in methods.registry().values()
    ]


def _defaults(section) -> dict:
    """A method section's keys with their defaults ("required" where the user must give one)."""
    return {
        name: "required" if field.is_required() else field.get_default(call_default_factory=True)
        for name, field in section.model_fields.items()
    }


def list_runs(output_dir: str | Path | None = None, *, everywhere: bool = False) -> list[dict]:
    """The registry's rows (default TUNESMITH_RUNS or ./runs), or those of every registry this user has run in."""
    if everywhere:
        return [row for reg in known_registries() for row in Registry(reg.parent).list()]
    return Registry(output_dir or default_dir()).list()


def clean_runs(output_dir: str | Path | None = None) -> list[dict]:
    """Mark runs whose process is gone (killed, crashed) as killed in the registry; returns them."""
    return Registry(output_dir or default_dir()).clean()


def show_run(key: str, output_dir: str | Path | None = None) -> dict:
    """The registry row plus the run's eval.json and resolved config: by name, the latest done run of that name
    (or the latest of any status when none is done)."""
    try:
        run_dir = find_run_dir(key, output_dir, done=True)
    except TunesmithError:
        run_dir = find_run_dir(key, output_dir)
    info = Registry(run_dir.parent).row(run_dir) or {"path": str(run_dir)}
    eval_path = run_dir / "eval.json"
    if eval_path.is_file():
        info["eval"] = json.loads(eval_path.read_text())
    info["config"] = yaml.safe_load((run_dir / "config.yaml").read_text())
    info["lineage"] = lineage(run_dir)
    return info


def lineage(run_dir: Path) -> list[str]:
    """The run folders this run descends from by --continue-from, its parent first, the first run last."""

    def parent_of(folder: Path) -> str | None:
        cfg = yaml.safe_load((folder / "config.yaml").read_text()) or {}
        return (cfg.get("continual") or {}).get("parent")

    chain, seen, parent = [], {run_dir}, parent_of(run_dir)
    while parent and Path(parent) not in seen and (Path(parent) / "config.yaml").is_file():
        chain.append(parent)
        seen.add(Path(parent))
        parent = parent_of(Path(parent))
    return chain


def list_models() -> list[dict]:
    return zoo.list_models()


def pull_model(name: str) -> Path:
    return zoo.pull(name)


__all__ = [
    "list_methods",
    "train",
    "prepare_data",
    "predict",
    "export",
    "audit",
    "generate",
    "chat",
    "evaluate",
    "list_runs",
    "clean_runs",
    "show_run",
    "list_models",
    "pull_model",
]


def serve_app(
    runs: list[str | Path],
    *,
    api_key: str | None = None,
    log_text: bool = False,
    retention_days: float | None = 30.0,
    store: str | Path | None = None,
    fmt: str | None = None,
    output_filter: str | Path | OutputFilter | None = None,
    **limits,
):
    """The FastAPI app that serves these runs (OpenAI-compatible; see tunesmith.serve), or their `fmt` exports;
    generated replies pass `output_filter` (a filter file, see tunesmith.infer.output_filter) when one is given.
    `limits` are the fields of serve.served.Limits (max_batch, max_queue, wait_ms, max_tokens, max_prompt_tokens,
    max_body_bytes, max_texts)."""
    from tunesmith.serve.served import Limits
    from tunesmith.serve.server import make_app

    return make_app(runs, api_key=api_key, limits=Limits(**limits), log_text=log_text,
                    retention_days=retention_days, store=Path(store) if store else None, fmt=fmt,
                    output_filter=_filter(output_filter))  # fmt: skip


def _filter(given: str | Path | OutputFilter | None) -> OutputFilter | None:
    return OutputFilter.load(given) if isinstance(given, str | Path) else given


def serve(app, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run a serve_app under uvicorn until interrupted."""
    from tunesmith.serve.server import run

    run(app, host=host, port=port)


def export_feedback(run: str | Path, to: str | Path, **options) -> dict:
    """A served run's feedback as training rows (see tunesmith.serve.export); returns the counts."""
    from tunesmith.serve.export import export_feedback as export

    return export(run, to, **options)


def gate(new: str | Path, served: str | Path, feedback: str | Path, *, tolerance: float = 0.01) -> dict:
    """Is the retrained run fit to replace the served one? (see tunesmith.gate); writes gate.json."""
    from tunesmith.gate import gate as check

    return check(new, served, feedback, tolerance=tolerance)


def promote(
    run: str | Path, server: str, *, model: str | None = None, force: bool = False, api_key: str | None = None
) -> dict:
    """Switch a running server to serve `run` under `model` (default: the run's name): only a run that passed its
    gate, unless forced."""
    from tunesmith.gate import passed
    from tunesmith.serve.served import served_name

    run_dir = find_run_dir(run, done=True)
    if not force:
        result = passed(run_dir)
        if not result["passed"]:
            raise TunesmithError(f"{run}: the gate failed ({result['why']}); promote with --force to override")
    return _admin(server, "promote", {"model": model or served_name(run_dir), "run": str(run_dir)}, api_key)


def rollback(model: str, server: str, *, api_key: str | None = None) -> dict:
    """Serve again what `model` served before its last promotion."""
    return _admin(server, "rollback", {"model": model}, api_key)


def _admin(server: str, action: str, body: dict, api_key: str | None) -> dict:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.post(server.rstrip("/") + f"/admin/{action}", json=body, headers=headers, timeout=600)
    except httpx.HTTPError as err:
        raise TunesmithError(f"no tunesmith server answered at {server} ({type(err).__name__}: {err})") from None
    if r.status_code != 200:
        try:
            message = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = r.text[:300]
        raise TunesmithError(f"{server}: {action} refused ({r.status_code}): {message}")
    return r.json()

"""Hyperparameter search (`tunesmith tune CONFIG --trials N`), so that nobody has to guess a learning rate.

Optuna's TPE sampler proposes values for the keys of the config's `search.space`. Each trial is a tunesmith run,
in the registry and tagged with the study, judged on its validation metric; a trial that trails the others at a
validation is pruned there (median or successive halving). The trials never read the test split (eval.test is off
for them: it is set aside in data/held_out/); at the end the best trial's model is scored on it, once. The study
lives in SQLite next to the run registry, so a search that was killed resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import yaml

from tunesmith import methods
from tunesmith.config import RunConfig, SearchParam, config_from_dict, dump_config
from tunesmith.errors import TunesmithError
from tunesmith.files import write_json
from tunesmith.runs import HOST
from tunesmith.train.loop import ON_EVAL

STUDIES = "studies.sqlite"  # beside registry.sqlite in the output folder
LOWER_IS_BETTER = ("loss", "perplexity")


class Pruned(TunesmithError):
    """A trial stopped at a validation because it trailed the others; its run is marked pruned, not failed."""

    status = "pruned"


@dataclass(frozen=True)
class Plan:
    """What every trial needs (plain data: --parallel hands it to other processes)."""

    base: dict  # the config without its search section
    space: dict[str, dict]
    metric: str
    direction: str
    pruner: str
    startup_trials: int
    study: str
    storage: str
    output_dir: str
    seed: int
    threads: int | None


def tune(
    config: str | Path | RunConfig | dict,
    trials: int,
    *,
    parallel: int = 1,
    study: str | None = None,
    overrides: list[str] | None = None,
    compare_default: bool = True,
) -> Path:
    """Run the search (or resume it) to `trials` finished trials and return the study folder: tune.json, best.yaml
    (ready for `tunesmith train`) and report.html. With compare_default, the config as given (no search values) is
    trained once more as a normal run, so that the report shows what the search gained."""
    import optuna

    from tunesmith.api import _as_config

    cfg = _as_config(config, overrides)
    if trials < 1:
        raise TunesmithError(f"--trials must be at least 1, got {trials}")
    plan = make_plan(cfg, study, parallel)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search = _study(plan, seed_offset=0)
    _fail_stale(search)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = len(search.get_trials(deepcopy=False, states=finished))
    remaining = max(0, trials - done)
    started = time.perf_counter()
    if parallel == 1:
        work(plan, remaining, 0)
    else:
        shares = [remaining // parallel + (i < remaining % parallel) for i in range(parallel)]
        with ProcessPoolExecutor(parallel, mp_context=get_context("spawn")) as pool:
            for future in [pool.submit(work, plan, n, i) for i, n in enumerate(shares) if n]:
                future.result()
    wall = search.user_attrs.get("wall_seconds", 0.0) + time.perf_counter() - started
    search.set_user_attr("wall_seconds", wall)
    return finish(plan, search, compare_default, wall)


def make_plan(cfg: RunConfig, study: str | None, parallel: int) -> Plan:
    """Everything checked before any trial starts: every key, range and choice of the search, the metric, the
    validation split the trials are judged on, and --parallel."""
    search = cfg.search
    if search is None or not search.space:
        raise TunesmithError("search.space: the config has no search space; add e.g. search: {space: {train.lr: "
                             "{low: 1.0e-5, high: 1.0e-3, log: true}}}")  # fmt: skip
    cores = len(os.sched_getaffinity(0))
    if not 1 <= parallel <= cores:
        raise TunesmithError(f"--parallel {parallel}: give 1 to {cores} (the CPU cores of this machine)")
    base = yaml.safe_load(dump_config(cfg))
    base["search"] = None
    for key, param in search.space.items():
        _check_key(base, key, param)
    method = methods.get(cfg.method)
    metric = search.metric or method.val_metrics[0]
    if metric not in method.val_metrics:
        raise TunesmithError(
            f"search.metric: {metric!r} is not a validation metric of method {method.name}; "
            f"choose one of {', '.join(method.val_metrics)}"
        )
    if not cfg.data.val and cfg.data.val_fraction <= 0:
        raise TunesmithError("search: trials are judged on the validation split; set data.val or data.val_fraction")
    direction = search.direction
    if direction == "auto":
        direction = "minimize" if metric in LOWER_IS_BETTER else "maximize"
    out = Path(cfg.output_dir).resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TunesmithError(f"output_dir {cfg.output_dir}: cannot create it ({err.strerror})") from None
    return Plan(
        base=base,
        space={k: v.model_dump() for k, v in search.space.items()},
        metric=metric,
        direction=direction,
        pruner=search.pruner,
        startup_trials=search.startup_trials,
        study=study or cfg.name,
        storage=f"sqlite:///{out / STUDIES}",
        output_dir=str(out),
        seed=cfg.train.seed,
        threads=max(1, cores // parallel) if parallel > 1 else None,
    )


def _check_key(base: dict, key: str, param: SearchParam) -> None:
    """The key is a config key, and every end of its range and every choice is a value it takes."""
    values = param.choices if param.choices is not None else [param.low, param.high]
    for value in values:
        if param.choices is not None and not isinstance(value, bool | int | float | str | type(None)):
            raise TunesmithError(
                f"search.space.{key}: choices must be numbers, strings, booleans or null; got {value!r}"
            )
        try:
            config_from_dict(base, f"search.space.{key}", _as_overrides({key: value}))
        except TunesmithError as err:
            raise TunesmithError(f"search.space.{key} = {value!r} is not a valid config value:\n{err}") from None


def _study(plan: Plan, seed_offset: int):
    import optuna

    storage = optuna.storages.RDBStorage(plan.storage, engine_kwargs={"connect_args": {"timeout": 120}})
    pruner = {
        "median": optuna.pruners.MedianPruner(n_startup_trials=plan.startup_trials, n_warmup_steps=0),
        "halving": optuna.pruners.SuccessiveHalvingPruner(),
        "none": optuna.pruners.NopPruner(),
    }[plan.pruner]
    return optuna.create_study(
        study_name=plan.study,
        storage=storage,
        sampler=optuna.samplers.TPESampler(seed=plan.seed + seed_offset),
        pruner=pruner,
        direction=plan.direction,
        load_if_exists=True,
    )


def _fail_stale(search) -> None:
    """Trials left running by a search that was killed: failed, so that resuming runs them again."""
    import psutil
    from optuna.trial import TrialState

    for t in search.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid, host = t.user_attrs.get("pid"), t.user_attrs.get("host")
        if host == HOST and not (pid and psutil.pid_exists(pid)):
            search._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)


def work(plan: Plan, n_trials: int, worker: int) -> None:
    """n_trials trials of the study, one after another (one of --parallel's processes, or the only one)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if n_trials:
        search = _study(plan, seed_offset=worker)
        search.optimize(lambda t: objective(t, plan), n_trials=n_trials, callbacks=[lambda _, t: _said(t, plan)])


def _said(trial, plan: Plan) -> None:
    value = f"{plan.metric} {trial.value:.4f}" if trial.value is not None else ""
    print(f"{plan.study} trial {trial.number}: {trial.state.name.lower()} {value} {trial.params}", flush=True)


def objective(trial, plan: Plan) -> float:
    """One trial: a tunesmith run with the proposed values, its test split set aside; its validation metric."""
    import optuna

    from tunesmith import api

    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("host", HOST)
    params = {key: _suggest(trial, key, SearchParam(**p)) for key, p in plan.space.items()}
    name = f"{plan.study}-t{trial.number:03d}"
    overrides = _as_overrides(params)
    overrides += [f"name={name}", "eval.test=false", f"output_dir={plan.output_dir}"]
    overrides += [f"train.threads={plan.threads}"] * bool(plan.threads)
    validations = 0

    def judge(step: int, metrics: dict[str, float]) -> None:
        nonlocal validations
        validations += 1
        value = metrics[plan.metric]
        trial.report(value, validations)
        if trial.should_prune():
            raise Pruned(f"pruned by study {plan.study} at validation {validations} (step {step}): "
                         f"{plan.metric} {value:.4f} trails the other trials")  # fmt: skip

    token = ON_EVAL.set(judge)
    try:
        run_dir = api.train(plan.base, overrides, quiet=True, study=plan.study)
    except Pruned:
        raise optuna.TrialPruned() from None
    finally:
        ON_EVAL.reset(token)
    trial.set_user_attr("run", str(run_dir))
    train = json.loads((run_dir / "eval.json").read_text())["train"]
    scores = train.get("best_val") or train.get("last_val") or {}
    if plan.metric not in scores:
        raise TunesmithError(f"trial {trial.number} ({run_dir}): the run reported no validation {plan.metric}")
    return float(scores[plan.metric])


def _as_overrides(params: dict) -> list[str]:
    """Values for dotted config keys as --set overrides (JSON is YAML, so strings and numbers keep their type)."""
    return [f"{k}={json.dumps(v)}" for k, v in params.items()]


def _suggest(trial, key: str, p: SearchParam):
    if p.choices is not None:
        return trial.suggest_categorical(key, p.choices)
    if p.is_int():
        return trial.suggest_int(key, p.low, p.high, step=p.step or 1, log=p.log)
    return trial.suggest_float(key, p.low, p.high, step=p.step, log=p.log)


def finish(plan: Plan, search, compare_default: bool, wall: float) -> Path:
    """The study's outcome: the best config as YAML, the test split scored once (the best trial's model), the
    default config beside it, tune.json and report.html."""
    from optuna.trial import TrialState

    from tunesmith import api
    from tunesmith.report.study import write_study_report

    folder = Path(plan.output_dir) / "studies" / plan.study
    folder.mkdir(parents=True, exist_ok=True)
    complete = search.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise TunesmithError(f"study {plan.study}: no trial finished (all pruned or failed); see {folder}")
    best = search.best_trial
    best_cfg = config_from_dict(plan.base, "(best trial)", _as_overrides(best.params))
    (folder / "best.yaml").write_text(dump_config(best_cfg))
    best_run = Path(best.user_attrs["run"])
    result = {
        "study": plan.study,
        "metric": plan.metric,
        "direction": plan.direction,
        "pruner": plan.pruner,
        "wall_seconds": round(wall, 1),
        "trials": [_trial_row(t) for t in search.get_trials(deepcopy=False)],
        "pruned": sum(t.state == TrialState.PRUNED for t in search.trials),
        "best": {"number": best.number, "value": best.value, "params": best.params, "run": str(best_run)},
        "importances": _importances(search),
    }
    result["best"]["test"] = _score_test(best_run, best_cfg, plan)
    if compare_default:
        default_run = api.train(plan.base, [f"name={plan.study}-default", f"output_dir={plan.output_dir}"], quiet=True)
        ev = json.loads((default_run / "eval.json").read_text())
        result["default"] = {"run": str(default_run), "tuned": ev.get("tuned"), "baseline": ev.get("baseline")}
        result["default"]["val"] = ev["train"].get("best_val") or ev["train"].get("last_val")
    write_json(folder / "tune.json", result)
    write_study_report(folder, result)
    return folder


def _trial_row(t) -> dict:
    steps = sorted(t.intermediate_values)
    seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
    return {
        "number": t.number,
        "state": t.state.name.lower(),
        "value": t.value,
        "params": t.params,
        "validations": [t.intermediate_values[s] for s in steps],
        "pruned_at": steps[-1] if t.state.name == "PRUNED" and steps else None,
        "seconds": round(seconds, 1) if seconds is not None else None,
        "run": t.user_attrs.get("run"),
    }


def _importances(search) -> dict[str, float]:
    """Optuna's parameter importances (its default evaluator: PED-ANOVA in optuna 5), where the finished trials
    allow them (two at least, and values that differ)."""
    import optuna

    try:
        return {k: round(v, 4) for k, v in optuna.importance.get_param_importances(search).items()}
    except (RuntimeError, ValueError):
        return {}


def _score_test(best_run: Path, best_cfg: RunConfig, plan: Plan) -> dict:
    """The test split, read once: the best trial's own model on it where its method scores another file (as
    `tunesmith evaluate`); otherwise the best config is trained again as a normal run, which scores it."""
    from tunesmith import api

    held_out = best_run / "data" / "held_out" / "test.parquet"
    if methods.get(best_cfg.method).evaluate is not None and held_out.is_file():
        report = api.evaluate(best_run, held_out, text="text", label="label", format="parquet", write=True)
        return {"how": "the best trial's model", **{k: report.get(k) for k in ("tuned", "baseline")}}
    again = api.train(best_cfg, [f"name={plan.study}-best", f"output_dir={plan.output_dir}"], quiet=True)
    ev = json.loads((again / "eval.json").read_text())
    return {"how": f"the best config trained again ({again})", "tuned": ev.get("tuned"), "baseline": ev.get("baseline")}

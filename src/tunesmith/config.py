"""The run configuration: pydantic models of the YAML, so a typo fails at load time, not at step 10,000."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunesmith.errors import TunesmithError, close_match


class Strict(BaseModel):
    """Unknown keys are errors; values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# One default for generate, chat and the samples eval.generate scores: at 1.0 small models fall into loops
# ("The City of Light" x14); CTRL's penalty at 1.1 breaks them and leaves ordinary repeats possible.
REPETITION_PENALTY = 1.1
FORMATS = ("auto", "csv", "tsv", "jsonl", "json", "parquet", "folder", "txt", "lines")  # data.format, eval --format
SHAPES = ("classify", "instruction", "chat", "preference", "feedback", "text")
PII_ENTITIES = ("EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "IP_ADDRESS", "URL", "PERSON", "LOCATION")


class CleanConfig(Strict):
    unicode: Literal["NFC", "NFKC", "none"] = (
        "NFC"  # NFKC also folds compatibility forms (ﬁ -> fi, full-width -> ASCII)
    )
    control_chars: bool = True  # drop control and zero-width characters (tabs and newlines stay)
    html: bool = True  # strip HTML tags and unescape entities in texts that hold HTML
    whitespace: bool = True  # collapse runs of spaces, trim lines, at most one blank line in a row
    min_chars: int = Field(1, ge=0)  # drop an example whose shortest text field is shorter than this, after cleaning
    max_chars: int | None = Field(None, gt=0)  # drop an example whose longest text field is longer


class DedupConfig(Strict):
    exact: bool = True  # same text after folding case, punctuation and whitespace
    near: bool = True  # MinHash LSH on character n-grams: near duplicates within and across splits
    threshold: float = Field(0.7, gt=0.0, le=1.0)  # Jaccard similarity from which two texts are near duplicates
    ngram: int = Field(3, ge=1)  # characters per shingle (3: one edit in a 60-character text keeps Jaccard near 0.9)
    num_perm: int = Field(128, ge=16)  # MinHash permutations
    # Texts shorter than this (after folding) are deduplicated exactly only: in a short text one changed word is
    # another question. Banking77 train: 61 of 819 near pairs under 50 characters are different intents, 1 of 206
    # above (benchmarks/dedup_short.py).
    near_min_chars: int = Field(50, ge=0)
    test: bool = False  # also drop duplicates inside a data.test file you give (train rows near it always go)


class PiiConfig(Strict):
    entities: list[Literal[PII_ENTITIES]] = list(PII_ENTITIES)  # PERSON and LOCATION need NER (slower)


class DataConfig(Strict):
    train: str  # a file (csv, tsv, jsonl, json, parquet, txt), a folder, or pkg:MODULE/path
    val: str | None = None  # optional: otherwise a seeded slice of train
    test: str | None = None  # optional: otherwise a seeded slice of train
    shape: Literal["auto", *SHAPES] = "auto"  # auto: told by the field names of the first row
    # Field names in the files; None means the usual names (text/sentence, label/category, prompt/instruction,
    # response/output, messages/conversations, chosen, rejected).
    text: str | list[str] | None = None  # a list joins several columns (e.g. [title, description]) into the text
    text_separator: str = "\n"  # between the joined text columns
    label: str | None = None
    label_names: dict[str, str] | str | None = None  # {1: World, 2: Sports} or a JSON file of that: label -> name
    label_position: Literal["first", "last"] = "first"  # format lines: the label is the first or the last field
    prompt: str | None = None
    response: str | None = None
    messages: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    references: list[str] | None = (
        None  # instruction: fields with reference answers (e.g. DialogSum test's summary1..3):
    )
    # generation metrics score against all of them; a file with no data.response field takes the first as its response
    prompt_template: str | None = None  # e.g. "Summarise this dialogue:\n{dialogue}": builds the prompt from fields
    # lines: one example per line, a label and a text split at the first (or, label_position: last, the last)
    # delimiter: "LABEL text", "__label__x text" (fastText), "text;label"
    format: Literal[FORMATS] = "auto"
    delimiter: str | None = Field(None, min_length=1, max_length=1)  # overrides the format's (lines: whitespace)
    columns: list[str] | None = None  # names for a headerless delimited file, in order
    encoding: str = "auto"  # "auto" detects it (UTF-8, latin-1, cp1252, ...)
    split_column: str | None = None  # a column saying train / val (validation, dev) / test for each row of data.train
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    # the validation split carved from train holds at most this many rows (null: no cap): 2,000 measure accuracy
    # to about +-1 point, and on a large set the rest of the 10% trains instead (and validation runs faster)
    val_max_rows: int | None = Field(2000, gt=0)
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    max_rows: int | None = Field(None, gt=0)  # read at most this many rows per file (quick trials)
    sample: int | None = Field(None, gt=0)  # train on a seeded random sample of this many training rows
    chunk_tokens: int = Field(512, gt=8)  # shape text: documents are cut into chunks of this many tokens
    chunk_overlap: int = Field(64, ge=0)  # shape text: tokens shared by consecutive chunks
    on_error: Literal["fail", "skip"] = "fail"  # skip: malformed rows are counted and reported
    clean: CleanConfig = CleanConfig()
    dedup: DedupConfig = DedupConfig()
    pii: PiiConfig | None = None  # set (e.g. `pii: {}`) to replace personal data by <EMAIL>, <PERSON>, ...
    unlabeled: str | None = None  # distill: a file of texts (its data.text field) the student learns from the teacher

    @field_validator("label_names", mode="before")
    @classmethod
    def _names_as_text(cls, value):
        """YAML reads `{1: World}` with a number for a key; labels are text."""
        return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _joined_text_has_columns(self) -> DataConfig:
        if isinstance(self.text, list) and not self.text:
            raise ValueError("data.text: an empty list; give a column name or a list of them")
        return self

    @model_validator(mode="after")
    def _overlap_below_chunk(self) -> DataConfig:
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError("data.chunk_overlap must be smaller than data.chunk_tokens")
        return self


class LoraConfig(Strict):
    r: int = Field(16, gt=0)  # rank of A and B
    alpha: float = Field(32.0, gt=0)  # scale is alpha / r
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    targets: str | list[str] = "all-linear"  # module names, or "all-linear"


class EarlyStopping(Strict):
    metric: str | None = None  # a validation metric of the method (`tunesmith methods`); default: its first
    patience: int = Field(2, ge=1)  # evaluations without improvement before stopping
    min_delta: float = Field(0.0, ge=0.0)


class DistributedConfig(Strict):
    """Several processes (`tunesmith train --nproc N`, or `accelerate launch -m tunesmith train`): see train/dist.py."""

    # ddp: each process holds the whole model and the gradients are summed across processes at every step;
    # fsdp: PyTorch FSDP2 (full shard): each process holds a shard of every weight, gradient and optimiser state,
    # and a layer's weights are gathered just for its forward and backward;
    # deepspeed: DeepSpeed's ZeRO (zero_stage 2: optimiser state and gradients sharded; 3: the weights too), where the
    # deepspeed package is installed (train/zero.py)
    strategy: Literal["ddp", "fsdp", "deepspeed"] = "ddp"
    zero_stage: Literal[2, 3] = 2
    # fsdp: the transformer layer classes sharded one by one (e.g. [BertLayer]); default: the model's own list
    # (transformers' _no_split_modules, e.g. LlamaDecoderLayer)
    fsdp_layers: list[str] | None = None
    timeout_s: float = Field(1800.0, gt=0)  # a process that stops answering fails the others after this long


class TrainConfig(Strict):
    epochs: float = Field(3.0, gt=0)
    max_steps: int | None = Field(None, gt=0)  # stop after this many optimiser steps
    batch_size: int = Field(32, gt=0)
    grad_accum: int = Field(1, gt=0)
    lr: float = Field(5e-5, gt=0)
    head_lr: float | None = Field(None, gt=0)  # learning rate of a freshly initialised head
    weight_decay: float = Field(0.01, ge=0)
    warmup: float = Field(0.06, ge=0)  # a fraction of all steps (< 1) or a number of steps (>= 1)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float | None = Field(1.0, gt=0)
    max_length: int = Field(128, gt=1)
    dropout: float | None = Field(None, ge=0.0, lt=1.0)  # overrides the model's dropout
    # The input token embeddings stay as pretrained: less memory and time (half of minilm's weights); classify's
    # recipe for large sets turns it on (methods/classify.py). Often tied to a causal LM's output layer, which then
    # freezes too.
    freeze_embeddings: bool = False
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    group_by_length: bool = True  # batches of similar length: far less padding
    packing: bool = False  # causal LMs: several examples per max_length sequence, attending only within themselves
    # Causal LMs and classifiers: the most tokens (rows x padded length) one forward pass holds. A batch above it
    # runs in parts whose gradients add up to the same update, so activation memory follows this, not batch_size.
    # auto: 1024 on a CPU (smollm2-135m LoRA, batches of 8 of up to 512 tokens: peak RSS 8.2 -> 4.1 GB at 0.77x the
    # speed; 2048: 5.4 GB at 0.92x; benchmarks/sft_levers.py; minilm-l6, batches of 128 of 12,000 SST-2 rows, 40
    # steps: 250 examples/s in parts against 191 whole, peak RSS 1.75 vs 2.14 GB), no split on a GPU.
    batch_tokens: int | Literal["auto"] | None = "auto"
    loss_on: Literal["replies", "all"] = "replies"  # chat data: the assistant's replies only, or every token
    early_stopping: EarlyStopping | None = None
    eval_every: int | None = Field(None, gt=0)  # steps between validations; default once per epoch
    checkpoint_every: int = Field(500, gt=0)  # steps between checkpoints
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, gt=0)
    seed: int = 13
    threads: int | None = Field(None, gt=0)  # CPU threads; default: all cores torch sees (shared out among processes)
    distributed: DistributedConfig = DistributedConfig()

    @field_validator("batch_tokens")
    @classmethod
    def _positive_budget(cls, value):
        if isinstance(value, int) and value <= 0:
            raise ValueError("must be a positive number of tokens, auto, or null (no split)")
        return value


class EvalConfig(Strict):
    baseline: bool = True  # also score the untuned model on the same test set
    calibrate: bool = True  # fit a temperature on validation
    bins: int = Field(15, ge=2)  # bins of the reliability diagram and ECE
    generate: int = Field(0, ge=0)  # generate replies for this many test rows, scored by ROUGE/BLEU/exact match
    max_new_tokens: int = Field(128, gt=0)  # the longest generated reply
    repetition_penalty: float = Field(
        REPETITION_PENALTY, ge=1.0
    )  # as `generate`: > 1 discourages the loops small models fall into
    general_text: str | None = None  # a general-text file: its perplexity before/after training measures forgetting
    general_tokens: int = Field(20000, gt=0)  # at most this many tokens of general_text are scored
    # false: the test split is set aside unread (data/held_out/test.parquet); `tunesmith tune` trains its trials so,
    # and scores the best trial's model on it once, at the end
    test: bool = True


class ContinualConfig(Strict):
    """A run that continues from a finished run (its parent: `tunesmith train CONFIG --continue-from RUN`) starts
    from the parent's model and keeps what it learnt by one of these strategies."""

    parent: str | None = None  # the run continued from: a name, registry id or folder (--continue-from sets it)
    # naive: plain sequential fine-tuning; replay: earlier training rows mixed in; l2: a pull towards the parent's
    # weights; ewc: the same pull, weighted per weight by the Fisher information on the parent's training rows
    # (scaled to a mean of 1, so that a weight means the same pull for ewc as for l2 on an average weight)
    strategy: Literal["naive", "replay", "l2", "ewc"] = "naive"
    # replay: earlier rows mixed in per new training row; 1.0 (one each) met the forgetting target on Banking77's
    # class-incremental stream, where 0.25 kept under half of each earlier group (benchmarks/continual.py)
    replay_ratio: float = Field(1.0, ge=0.0, le=1.0)
    weight: float = Field(1.0, ge=0.0)  # l2, ewc: the strength of the pull (lambda)
    fisher_rows: int = Field(512, gt=0)  # ewc: parent training rows the Fisher information is estimated on
    buffer: int = Field(1000, gt=0)  # training rows every run keeps (seeded, shared out among its tasks) for replay


class SearchParam(Strict):
    """One key's range (low..high, on a log scale where log is set, in steps where step is set) or its choices."""

    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = Field(None, gt=0)
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _range_or_choices(self) -> SearchParam:
        if self.choices is not None:
            if not self.choices:
                raise ValueError("choices is empty: give at least one value")
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low and high, not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give low and high (a range) or choices")
        if not self.low < self.high:
            raise ValueError(f"the range is empty: low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("a range has either log or step, not both")
        return self

    def is_int(self) -> bool:
        """Written as whole numbers (low: 1, not 1.0): the trials draw whole numbers."""
        return all(isinstance(v, int) for v in (self.low, self.high, self.step or 1))


class SearchConfig(Strict):
    """`tunesmith tune`: what the trials vary (any config key, dotted: train.lr, lora.r, ...), how they are judged."""

    space: dict[str, SearchParam] = {}
    metric: str | None = None  # a validation metric of the method; default: its first (the early-stopping default)
    direction: Literal["auto", "maximize", "minimize"] = "auto"  # auto: minimise loss and perplexity, else maximise
    pruner: Literal["median", "halving", "none"] = "median"  # stop trials that trail at a validation
    startup_trials: int = Field(5, ge=0)  # median: trials that run to the end before any is pruned


def _default_method() -> str:
    from tunesmith import methods  # late: the methods import this module

    return methods.DEFAULT


class RunConfig(Strict):
    """The core keys, plus the method's own section under its name (e.g. `<method>: {beta: 0.1}`), which the method
    declares (methods/) and which is checked here, at load time, like every other key."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)  # extra keys: the method's section only

    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    model: str  # an alias (tunesmith models list), a hub id (cached) or a local folder
    method: str = Field(default_factory=_default_method)  # `tunesmith methods` lists them
    data: DataConfig
    lora: LoraConfig | None = None  # omit for full fine-tuning
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    continual: ContinualConfig = ContinualConfig()
    # Transfer learning in stages: each entry is trained before this run, in order, each from the weights of the
    # one before (the first from `model`), and this run from the last: {name, data, and any of method, train,
    # eval, lora, keep_head and the stage method's section}; train and eval are merged over this run's.
    stages: list[dict] = []
    search: SearchConfig | None = None  # `tunesmith tune CONFIG`: the search space; `train` ignores it
    keep_head: bool = False  # after a stage: keep its classification head even where the labels differ in name
    output_dir: str = "runs"

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> RunConfig:
        taken = (0 if self.data.val else self.data.val_fraction) + (0 if self.data.test else self.data.test_fraction)
        if taken >= 0.9:
            raise ValueError("data.val_fraction + data.test_fraction must leave at least 10% for training")
        return self

    @model_validator(mode="after")
    def _stages_are_valid(self) -> RunConfig:
        """Every stage is a valid config of its own (checked now, before anything trains)."""
        from tunesmith.stages import stage_configs

        stage_configs(self)
        return self

    @model_validator(mode="after")
    def _fits_the_method(self) -> RunConfig:
        """The method exists; its section is valid and no other method's is given; no key is set that only other
        methods use; the early-stopping metric is one its validation reports."""
        from tunesmith import methods

        try:
            method = methods.get(self.method)
        except ValueError as err:
            raise ValueError(f"method: {err}") from None
        extra = self.__pydantic_extra__
        for key in list(extra):
            if key == method.name and method.section is not None:
                continue
            if key in methods.registry() and methods.get(key).section is not None:
                raise ValueError(f"{key}: a section of method {key}, but method is {method.name}")
            raise ValueError(
                unknown_key(key, [*type(self).model_fields, *[method.name] * (method.section is not None)])
            )
        if method.section is not None:
            try:
                extra[method.name] = method.section.model_validate(extra.get(method.name) or {})
            except ValidationError as err:
                raise ValueError("\n  ".join(_lines(err, prefix=method.name, root=method.section))) from None
        for key in sorted(methods.method_options() - method.options):
            section, field = key.split(".")
            model = getattr(self, section)
            if getattr(model, field) != type(model).model_fields[field].default:
                users = [m.name for m in methods.registry().values() if key in m.options]
                raise ValueError(f"{key}: method {method.name} does not use it (it is for {', '.join(users)})")
        stop = self.train.early_stopping
        if stop is not None:
            if stop.metric is None:
                stop.metric = method.val_metrics[0]
            elif stop.metric not in method.val_metrics:
                raise ValueError(
                    f"train.early_stopping.metric: {stop.metric!r} is not a validation metric of method "
                    f"{method.name}; choose one of {', '.join(method.val_metrics)}"
                )
        return self

    def section(self) -> BaseModel | None:
        """The method's own section (e.g. cfg.section().beta), with its defaults filled in."""
        return self.__pydantic_extra__.get(self.method)


def _lines(err: ValidationError, prefix: str = "", root: type[BaseModel] | None = None) -> list[str]:
    lines = []
    for e in err.errors():
        key = ".".join([prefix] * bool(prefix) + [str(p) for p in e["loc"]])
        if e["type"] == "extra_forbidden":
            lines.append(unknown_key(key, _keys_at(root or RunConfig, e["loc"][:-1])))
        elif e["type"] == "missing":
            lines.append(f"{key}: required but missing")
        elif e["type"] == "value_error" and not key:  # a check across keys: its message names them
            lines.append(e["msg"].removeprefix("Value error, "))
        else:
            lines.append(f"{key or '(top level)'}: {e['msg']} (got {e.get('input')!r})")
    return lines


def unknown_key(key: str, known: list[str]) -> str:
    """ "train.epoch: unknown key; did you mean train.epochs?" """
    head, _, last = key.rpartition(".")
    close = close_match(last, known)
    hint = f"did you mean {head + '.' if head else ''}{close}?" if close else "see the config reference in README.md"
    return f"{key}: unknown key; {hint}"


def _keys_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys allowed in the section at `loc` (e.g. ("train", "early_stopping")) of `model`."""
    for part in loc:
        field = model.model_fields.get(str(part))
        kinds = (field.annotation, *get_args(field.annotation)) if field else ()
        model = next((k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)), None)
        if model is None:
            return []
    return list(model.model_fields)


def _explain(err: ValidationError, source: str) -> TunesmithError:
    return TunesmithError(f"invalid config {source}:\n" + "\n".join("  " + line for line in _lines(err)))


def parse_override(item: str) -> tuple[list[str], Any]:
    """`train.lr=3e-5` -> (["train", "lr"], 3e-05); the value is read as YAML so types come out right."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise TunesmithError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=3e-5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = parse_override(item)
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise TunesmithError(f"--set {item!r}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return raw


def config_from_dict(raw: dict, source: str = "(dict)", overrides: list[str] | None = None) -> RunConfig:
    raw = apply_overrides(copy.deepcopy(raw), overrides or [])  # the caller's dict (and its sections) stay as given
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise _explain(err, source) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config; relative data paths are taken relative to the config file's folder."""
    path = Path(path)
    cfg = config_from_dict(read_yaml_mapping(path, "config", "name, model, data, ..."), str(path), overrides)
    return resolve_paths(cfg, path.parent)


def read_yaml_mapping(path: Path, what: str, keys: str, *, empty: dict | None = None) -> dict:
    """A YAML file that holds a mapping, or an error naming the file (and the line) and the keys it should hold.
    An empty file is `empty` where one is given, else an error."""
    if not path.is_file():
        raise TunesmithError(f"{what} file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise TunesmithError(f"{path}{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if raw is None and empty is not None:
        return empty
    if not isinstance(raw, dict):
        raise TunesmithError(f"{path}: expected a mapping of keys ({keys}), got {type(raw).__name__}")
    return raw


def resolve_paths(cfg: RunConfig, base: Path) -> RunConfig:
    """Data paths and a model folder given relative to the config are made absolute."""
    for field in ("train", "val", "test"):
        value = getattr(cfg.data, field)
        if value and not value.startswith("pkg:") and not Path(value).is_absolute():
            setattr(cfg.data, field, str((base / value).resolve()))
    names = cfg.data.label_names
    if isinstance(names, str) and not Path(names).is_absolute():
        cfg.data.label_names = str((base / names).resolve())
    if cfg.eval.general_text and not Path(cfg.eval.general_text).is_absolute():
        cfg.eval.general_text = str((base / cfg.eval.general_text).resolve())
    for stage in cfg.stages:  # checked to be mappings with a data mapping when the config was validated
        data = stage["data"]
        for field in ("train", "val", "test", "label_names"):
            value = data.get(field)
            if isinstance(value, str) and not value.startswith("pkg:") and not Path(value).is_absolute():
                data[field] = str((base / value).resolve())
    if cfg.model.startswith((".", "/")) and not Path(cfg.model).is_absolute():
        cfg.model = str((base / cfg.model).resolve())
    return cfg


def dump_config(cfg: RunConfig) -> str:
    """The resolved config with every default written out."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)

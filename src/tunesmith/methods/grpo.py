"""Group relative policy optimisation (Shao et al., 2024): online RL with your own reward. For each prompt the
model samples a group of completions; each completion's advantage is its reward normalised within its group,
A = (r - mean_group) / (std_group + 1e-4), so no value model is needed. Per completion token, with the ratio
rho = pi / pi_old (pi_old: the policy that sampled; one update per sampling, as TRL's default, so pi_old is pi
detached and needs no forward pass of its own) and the k3 estimate of KL to the reference, the loss is

    -min(rho * A, clip(rho, 1 - epsilon, 1 + epsilon) * A) + beta * (ref/pi - log(ref/pi) - 1),

averaged over each completion's tokens, then over completions. The reward is a weighted sum of Python functions
(`module:function`, called with the prompts, the completions and the rows' reference answers) and trained reward
runs (by name). The reference is the LoRA adapter switched off, so beta > 0 needs `lora`. Batches are sampled
during training through the inference layer's batched generation: the loop's plan holds only prompt indices.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from pydantic import Field, model_validator

from tunesmith.config import RunConfig, Strict
from tunesmith.data.prepared import read_rows
from tunesmith.errors import TunesmithError
from tunesmith.eval import forgetting
from tunesmith.eval.forgetting import Forgetting
from tunesmith.infer.generator import Generator, Sampling
from tunesmith.lm.chat import as_messages, prompt_text
from tunesmith.lm.logprobs import target_logits
from tunesmith.lm.tokens import branch_rows, pad_id, reply_tokens
from tunesmith.methods import Method
from tunesmith.models import zoo
from tunesmith.models.build import build_causal_lm, freeze_embeddings
from tunesmith.models.saved import save_merged
from tunesmith.train.loop import Batch, Task, fit


class RewardSpec(Strict):
    function: str | None = Field(None, pattern=r"^[^:]+:\w+$")  # module:function, or path/to/file.py:function
    run: str | None = None  # a trained reward run: its name, id or folder
    weight: float = 1.0

    @model_validator(mode="after")
    def _one_source(self) -> RewardSpec:
        if (self.function is None) == (self.run is None):
            raise ValueError("each reward gives exactly one of function (module:function) or run")
        return self


class GrpoConfig(Strict):
    rewards: list[RewardSpec] = Field(min_length=1)
    group_size: int = Field(4, ge=2)  # completions sampled per prompt
    temperature: float = Field(1.0, gt=0)  # sampling temperature of the rollouts
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(64, gt=0)  # the longest completion
    beta: float = Field(0.04, ge=0)  # weight of the KL penalty to the reference (the adapter switched off)
    epsilon: float = Field(0.2, gt=0, lt=1)  # clip range of the policy ratio
    eval_prompts: int = Field(200, gt=0)  # held-out prompts scored by greedy completions, tuned and untuned


Reward = Callable[[list[str], list[str], dict], list[float]]


def load_rewards(cfg: GrpoConfig) -> dict[str, tuple[float, Reward]]:
    """name -> (weight, fn(prompts, completions, fields) -> floats); a module that does not import, a missing
    function or a reward run that is not a reward model is an error naming it."""
    out = {}
    for n, spec in enumerate(cfg.rewards):
        where = f"grpo.rewards[{n}]"
        if spec.function:
            module, _, name = spec.function.rpartition(":")
            try:
                fn = getattr(_module(module), name)
            except Exception as err:  # noqa: BLE001 - any import failure of user code is a user error
                raise TunesmithError(f"{where}.function {spec.function!r}: {type(err).__name__}: {err}") from None
            out[re.sub(r"\W", "_", name)] = (spec.weight, lambda p, c, f, fn=fn: fn(p, c, **f))
        else:
            from tunesmith.infer.reward import RewardModel

            try:
                scorer = RewardModel.load(spec.run)
            except TunesmithError as err:
                raise TunesmithError(f"{where}.run {spec.run!r}: {err}") from None
            out[re.sub(r"\W", "_", Path(spec.run).name)] = (spec.weight, lambda p, c, f, s=scorer: s.score(p, c))
    return out


def _module(name: str):
    """An importable module, or a .py file (relative to the working directory)."""
    if not name.endswith(".py"):
        return importlib.import_module(name)
    path = Path(name).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no file {path}")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def score(
    rewards: dict, prompts: list[str], completions: list[str], fields: dict, skip: bool = False
) -> dict[str, np.ndarray]:
    """Each reward's (N,) floats, checked: a raise, a NaN or the wrong count is an error naming the function, or,
    with `skip` (data.on_error: skip), NaN for what it could not score (those groups teach nothing and are counted)."""
    out = {}
    for name, (_, fn) in rewards.items():
        try:
            out[name] = _checked(name, fn(prompts, completions, fields), completions)
        except TunesmithError:
            if not skip:
                raise
            out[name] = np.full(len(completions), np.nan)
        except Exception as err:  # noqa: BLE001 - the user's reward function failed
            if not skip:
                raise TunesmithError(f"reward {name!r} raised {type(err).__name__}: {err}") from None
            out[name] = np.full(len(completions), np.nan)
    return out


def _checked(name: str, got, completions: list[str]) -> np.ndarray:
    values = np.asarray(got, dtype=np.float64) if hasattr(got, "__len__") else None
    if values is None or values.shape != (len(completions),):
        raise TunesmithError(f"reward {name!r} returned {got!r:.80}, not {len(completions)} numbers")
    if not np.isfinite(values).all():
        bad = int(np.argmin(np.isfinite(values)))
        raise TunesmithError(f"reward {name!r} returned NaN or infinity (completion {bad}: {completions[bad]!r:.80})")
    return values


def advantages(total: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(N,) group-normalised advantages of rewards in consecutive groups, and which groups have no variance."""
    groups = total.reshape(-1, group_size)
    std = groups.std(axis=1, keepdims=True)  # NaN for a group with an unscored completion (on_error: skip)
    adv = np.nan_to_num((groups - groups.mean(axis=1, keepdims=True)) / (std + 1e-4))
    return adv.reshape(-1), ~(std[:, 0] > 0)


def token_logprobs(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) log-probs of the completion tokens and (N,) the row of each."""
    logits, targets, rows = target_logits(model, batch)
    return torch.log_softmax(logits.float(), -1).gather(1, targets[:, None])[:, 0], rows


def grpo_loss(logp: torch.Tensor, rows: torch.Tensor, batch: Batch, cfg: GrpoConfig):
    """The clipped surrogate plus the KL penalty, per token, averaged per completion and summed over completions."""
    adv = batch["advantages"][rows]
    old = batch["old"] if "old" in batch else logp.detach()  # one update per sampling: pi_old is pi, ratio 1
    ratio = torch.exp(logp - old)
    surrogate = torch.min(ratio * adv, ratio.clamp(1 - cfg.epsilon, 1 + cfg.epsilon) * adv)
    delta = batch["ref"] - logp if cfg.beta > 0 else torch.zeros_like(logp)
    kl = torch.exp(delta) - delta - 1
    per_token = -surrogate + cfg.beta * kl
    b = batch["advantages"].shape[0]
    counts = torch.zeros(b, device=logp.device).index_add_(0, rows, torch.ones_like(logp)).clamp(min=1)
    per_row = torch.zeros(b, device=logp.device).index_add_(0, rows, per_token) / counts
    kl_row = torch.zeros(b, device=logp.device).index_add_(0, rows, kl.detach()) / counts
    return per_row.sum(), {"kl": kl_row.sum()} | batch["reward_metrics"]


@contextmanager
def _eval_mode(model: torch.nn.Module):
    """Sampling and scoring in eval mode (no LoRA dropout), then back to the mode the loop had set."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class Rollouts:
    """The prompts of a split, and how to turn a set of them into a batch of sampled, scored completions."""

    def __init__(self, tokenizer, rows: list[dict], cfg: RunConfig, rewards: dict, *, split: str = ""):
        self.tokenizer, self.cfg, self.grpo, self.rewards = tokenizer, cfg, cfg.section(), rewards
        self.prompts, self.fields = [], {"references": []}
        self.dropped = self.cut_short = 0  # prompts with no room for a completion; prompts whose completions may be cut
        length = cfg.train.max_length
        for n, row in enumerate(rows):
            prompt = as_messages(row)[:-1]
            used = len(tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"])
            if used >= length:
                if cfg.data.on_error == "fail":
                    raise TunesmithError(
                        f"{split} prompt {n + 1} (data/{split}.parquet) is {used} tokens, so no room is left for a "
                        f"completion within train.max_length={length}; raise train.max_length, or set "
                        f"data.on_error: skip to skip and count such prompts"
                    )
                self.dropped += 1
                continue
            self.cut_short += used + self.grpo.max_new_tokens > length
            self.prompts.append(prompt)
            self.fields["references"].append(row.get("references") or [as_messages(row)[-1]["content"]])
        self.pad_id = pad_id(tokenizer)

    def __len__(self) -> int:
        return len(self.prompts)

    def texts(self, idx) -> list[str]:
        return [self.prompts[i][-1]["content"] for i in idx]

    def completions(self, model, idx, sampling: Sampling) -> list[str]:
        return Generator(model, self.tokenizer).replies([self.prompts[i] for i in idx], sampling)

    def rewarded(self, idx, completions: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        fields = {k: [v[i] for i in idx] for k, v in self.fields.items()}
        each = score(self.rewards, self.texts(idx), completions, fields, skip=self.cfg.data.on_error == "skip")
        return sum(self.rewards[n][0] * v for n, v in each.items()), each

    @torch.no_grad()
    def batch(self, model: torch.nn.Module, idx) -> Batch:
        """Sample group_size completions per prompt (the model in eval mode), score them, and precompute the
        reference's token log-probs. A prompt and its group are one row: the prompt is read once (branch_rows)."""
        g = self.grpo
        group = [i for i in idx for _ in range(g.group_size)]
        n = len(group)
        sampling = Sampling(g.max_new_tokens, g.temperature, g.top_p, repetition_penalty=1.0)
        length = self.cfg.train.max_length
        device = next(model.parameters()).device
        start = time.perf_counter()
        with _eval_mode(model):
            completions = self.completions(model, group, sampling)
            generated = time.perf_counter()
            encoded = [reply_tokens(self.tokenizer, self.prompts[i], c, length) for i, c in zip(group, completions)]
            rows = branch_rows([encoded[at : at + g.group_size] for at in range(0, n, g.group_size)], self.pad_id)
            p = n // g.group_size  # branch_rows numbers completion j of prompt q j * p + q; here it is q * size + j
            rows["seq"] = rows["seq"] % p * g.group_size + rows["seq"] // p
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in rows.items()}
            ref = torch.zeros(0)
            if g.beta > 0:
                with model.disable_adapter():
                    ref, _ = token_logprobs(model, batch)
        total, each = self.rewarded(group, completions)
        adv, flat = advantages(total, g.group_size)
        seconds = {"generate_s": generated - start, "rollout_s": time.perf_counter() - start}  # + reference, rewards
        metrics = {f"reward_{k}": float(np.nansum(v)) for k, v in each.items()}
        metrics |= {f"reward_{k}_std": float(np.nanstd(v)) * n for k, v in each.items()}
        metrics |= {
            "reward": float(np.nansum(total)),
            "unscored_completions": float(np.isnan(total).sum()),
            "zero_std_groups": float(flat.mean()) * n,
            "completion_tokens": float(len(batch["targets"])),
        } | {k: v * n for k, v in seconds.items()}  # per completion (seconds: per micro-batch), once averaged
        adv_t = torch.as_tensor(adv, dtype=torch.float32, device=device)
        return batch | {"advantages": adv_t, "ref": ref, "reward_metrics": metrics, "n": n, "examples": n}

    @torch.no_grad()
    def greedy_scores(self, model: torch.nn.Module, limit: int) -> dict[str, float]:
        """Mean reward (total and per function) of greedy completions of the first `limit` prompts."""
        idx = list(range(min(limit, len(self))))
        with _eval_mode(model):
            completions = self.completions(model, idx, Sampling(self.grpo.max_new_tokens, temperature=0.0))
        total, each = self.rewarded(idx, completions)
        out = {"reward": float(np.nanmean(total))} | {f"reward_{k}": float(np.nanmean(v)) for k, v in each.items()}
        samples = [{"prompt": p[:300], "reply": c[:300]} for p, c in zip(self.texts(idx), completions)][:5]
        return out | {"completion_chars": float(np.mean([len(c) for c in completions])), "samples": samples}


def make_task(model: torch.nn.Module, data: dict[str, Rollouts], cfg: RunConfig) -> Task:
    t, g, train, val = cfg.train, cfg.section(), data["train"], data.get("val")
    per_step = max(1, t.batch_size // g.group_size)  # prompts per micro-batch: batch_size completions

    def batches(epoch: int) -> list[np.ndarray]:
        order = np.random.default_rng(t.seed + epoch).permutation(len(train))
        return [order[i : i + per_step] for i in range(0, len(order), per_step)]

    def loss(m: torch.nn.Module, batch: Batch):
        logp, rows = token_logprobs(m, batch)
        return grpo_loss(logp, rows, batch, g)

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        return {k: v for k, v in val.greedy_scores(m, g.eval_prompts).items() if isinstance(v, float)}

    return Task(model=model, batches=batches, loss=loss, collate=lambda idx: train.batch(model, idx),
                evaluate=evaluate if val is not None and len(val) else None, minimise=(),
                samples_from_model=True)  # fmt: skip


# ---- the recipe: read top to bottom ---------------------------------------------------------------------


def run(cfg: RunConfig, run_dir: Path, *, resume: bool = False, quiet: bool = False) -> dict:
    """Rewards loaded -> untuned greedy rewards on held-out prompts -> GRPO -> save model/ -> tuned rewards."""
    from transformers import AutoTokenizer

    g = cfg.section()
    if g.beta > 0 and cfg.lora is None:
        raise TunesmithError(
            "grpo.beta > 0 keeps the model near the reference, which is the LoRA adapter switched off: "
            "set lora (e.g. lora: {r: 16}), or grpo.beta: 0 to train without the KL penalty"
        )
    rewards = load_rewards(g)
    model_dir = zoo.resolve(cfg.model)
    zoo.quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = {n: Rollouts(tokenizer, rows, cfg, rewards, split=n) for n, rows in read_rows(run_dir / "data").items()}
    if not len(data["train"]):
        length = cfg.train.max_length
        raise TunesmithError(f"no training prompt leaves room for a completion within train.max_length={length}")
    torch.manual_seed(cfg.train.seed)
    model = build_causal_lm(model_dir, dropout=cfg.train.dropout, lora=cfg.lora)
    freeze_embeddings(model, cfg.train, cfg.lora)
    test, forgets = data.get("test"), Forgetting(tokenizer, cfg)
    base = None
    if test and len(test) and cfg.eval.baseline:
        base = test.greedy_scores(model, g.eval_prompts) | forgets.scores(model.eval())
    result = fit(make_task(model, data, cfg), cfg.train, run_dir, resume=resume, quiet=quiet)
    prompts = {n: {"prompts": len(r), "dropped_no_room": r.dropped, "completions_may_be_cut": r.cut_short}
               for n, r in data.items()}  # fmt: skip
    report = {**g.model_dump(), "train": result.summary(), "prompts": prompts}
    if test is not None and len(test):
        tuned = test.greedy_scores(model, g.eval_prompts) | forgets.scores(model.eval())
        report |= {"test_rows": min(len(test), g.eval_prompts), "tuned": tuned} | forgets.report(base, tuned)
        if base:
            report["baseline"] = base
    save_merged(model, tokenizer, cfg, model_dir, run_dir / "model")
    return report


METHODS = (
    Method(
        name="grpo",
        summary="online RL of a causal LM with your reward (GRPO): groups of samples, group-normalised advantages",
        shapes=("instruction", "chat"),
        run=run,
        scores=(("reward", False), ("completion_chars", False), ("general_perplexity", True)),
        val_metrics=("reward",),
        headline=("reward",),
        section=GrpoConfig,
        options=forgetting.OPTIONS,
        curve=("reward",),
        figures=("before_after",),
        panels=(("mean reward of greedy completions on held-out prompts", ("reward",)), forgetting.PANEL),
        samples_from_model=True,
    ),
)

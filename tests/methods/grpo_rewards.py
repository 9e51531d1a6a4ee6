"""Reward functions the GRPO tests name as module:function, as a user's own module would be."""


def short(prompts, completions, **fields):
    """Higher for shorter completions: something a tiny model can learn in a few steps."""
    return [-len(c) / 10 for c in completions]


def says_yes(prompts, completions, references, **fields):
    return [float(c.strip().lower().startswith(r[0].strip().lower()[:3])) for c, r in zip(completions, references)]


def wrong_count(prompts, completions, **fields):
    return [1.0]


def not_a_number(prompts, completions, **fields):
    return [float("nan")] * len(completions)


def broken(prompts, completions, **fields):
    raise KeyError("answer")

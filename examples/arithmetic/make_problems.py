"""Arithmetic word problems for GRPO, from a seeded generator: one-step and two-step problems whose answer is
one exact integer. Train and held-out sets come from distinct seeds, and no held-out text repeats a train text.

    python examples/arithmetic/make_problems.py            # -> examples/arithmetic/{train,test}.jsonl
    python examples/arithmetic/make_problems.py --train 2000 --test 200 --train-seed 1 --test-seed 2
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Farah", "Goran", "Hana", "Ivo", "June", "Kofi", "Lena", "Mateo", "Nia"]
ITEMS = ["apples", "books", "coins", "marbles", "pencils", "stamps", "shells", "cards", "eggs", "buttons"]
INSTRUCTION = "Solve the problem in one or two short sentences, then end with 'Answer: <number>'."


def one_step(rng: random.Random) -> tuple[str, int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(2, 60), rng.randint(2, 40)
    kind = rng.choice(["gain", "loss", "times"])
    if kind == "gain":
        return f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?", a + b
    if kind == "loss":
        a = a + b
        return f"{name} has {a} {item} and gives away {b}. How many {item} are left?", a - b
    k, n = rng.randint(2, 9), rng.randint(2, 12)
    return f"{name} buys {k} boxes of {item} with {n} {item} in each box. How many {item} is that?", k * n


def two_step(rng: random.Random) -> tuple[str, int]:
    text, value = one_step(rng)
    c = rng.randint(2, 20)
    if rng.random() < 0.5:
        return f"{text[: text.rindex('.') + 1]} Then {c} more arrive. How many are there in the end?", value + c
    c = min(c, value - 1)
    return f"{text[: text.rindex('.') + 1]} Then {c} of them are lost. How many are there in the end?", value - c


def problems(n: int, seed: int, exclude: set[str] = frozenset()) -> list[dict]:
    """n problems, half one-step and half two-step, none of whose texts is in `exclude`."""
    rng, out, seen = random.Random(seed), [], set(exclude)
    while len(out) < n:
        text, answer = (one_step if len(out) % 2 == 0 else two_step)(rng)
        if text in seen:
            continue
        seen.add(text)
        out.append({"prompt": f"{INSTRUCTION}\n\n{text}", "response": f"Answer: {answer}", "steps": 1 + len(out) % 2})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent)
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--train-seed", type=int, default=1)
    ap.add_argument("--test-seed", type=int, default=2)
    args = ap.parse_args()
    if args.train_seed == args.test_seed:
        raise SystemExit("--train-seed and --test-seed must differ")
    train = problems(args.train, args.train_seed)
    test = problems(args.test, args.test_seed, exclude={r["prompt"].split("\n\n", 1)[1] for r in train})
    for name, rows in (("train", train), ("test", test)):
        (args.out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{args.out / f'{name}.jsonl'}: {len(rows)} problems")


if __name__ == "__main__":
    main()

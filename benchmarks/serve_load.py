"""Benchmark: `tunesmith serve` under load on loopback, against transformers' generate once per request.

The model is the bundled smollm2-135m-instruct (as a run folder made from the base weights). Each request is a
greedy chat completion of at most --tokens new tokens (the prompts ask for long answers, so nearly all run to the
limit), streamed, so that time to first token is measured on both sides. At each concurrency (1, 8, 32) that many
clients send requests back to back until --requests are answered.

- tunesmith: `tunesmith serve RUN --max-batch 32` in its own process: requests that arrive together share one
  batched generate.
- the baseline: a plain FastAPI endpoint that calls model.generate for each request (a TextIteratorStreamer for
  the stream), in its own process, at its faster of two settings measured in this run: "threads" (FastAPI's
  thread pool runs requests side by side) and "serial" (one generate at a time, behind a lock).

Both apply the same repetition penalty (tunesmith's default). Writes benchmarks/results/serve_load.json:
{"concurrency": {"1": {...}, "8": {...}, "32": {...}}, "baseline": {...}, "throughput_ratio_at_32"}.

    .venv/bin/python benchmarks/serve_load.py                (about 5 minutes on 2 cores)
    .venv/bin/python benchmarks/serve_load.py --requests 8 --tokens 8 --out /tmp/load.json   (a quick check)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from fastapi import Request  # at module level: FastAPI resolves the endpoint's annotations here

MODEL = "smollm2-135m-instruct"
LEVELS = (1, 8, 32)
OUT = Path(__file__).resolve().parent / "results" / "serve_load.json"
TOPICS = ["the history of bread", "how rivers form", "why the sky is blue", "the rules of chess", "how bees live",
          "the life of a star", "how a bicycle works", "the water cycle"]  # fmt: skip


def prompt(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Write a long, detailed essay about {TOPICS[i % len(TOPICS)]}."}]


# ---- the baseline server ------------------------------------------------------------------------------------


def baseline_app(model_dir: str, mode: str):
    import torch
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

    from tunesmith.config import REPETITION_PENALTY

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    lock = threading.Lock() if mode == "serial" else None
    app = FastAPI()

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        text = tokenizer.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = dict(ids, max_new_tokens=body["max_tokens"], do_sample=False, streamer=streamer,
                      repetition_penalty=REPETITION_PENALTY)  # fmt: skip
        count = {}

        def work():
            if lock:
                lock.acquire()
            try:
                out = model.generate(**kwargs)
                count["tokens"] = out.shape[1] - ids["input_ids"].shape[1]
            finally:
                if lock:
                    lock.release()

        worker = threading.Thread(target=work, daemon=True)
        worker.start()

        def events():
            for piece in streamer:
                if piece:
                    yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': piece}}]})}\n\n"
            worker.join()
            yield f"data: {json.dumps({'choices': [], 'usage': {'completion_tokens': count.get('tokens', 0)}})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


# ---- the load ----------------------------------------------------------------------------------------------


async def drive(url: str, concurrency: int, requests: int, tokens: int) -> dict:
    import httpx

    latencies, ttfts, counts, errors = [], [], [], 0
    next_id = iter(range(requests))

    async def client(http: httpx.AsyncClient):
        nonlocal errors
        for i in next_id:
            body = {"model": "base", "messages": prompt(i), "max_tokens": tokens, "temperature": 0, "stream": True,
                    "stream_options": {"include_usage": True}}  # fmt: skip
            start, first, used = time.perf_counter(), None, 0
            try:
                async with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
                    if r.status_code != 200:
                        errors += 1
                        await r.aread()
                        continue
                    async for line in r.aiter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        chunk = json.loads(line[6:])
                        if chunk.get("usage"):
                            used = chunk["usage"]["completion_tokens"]
                        if first is None and any(c["delta"].get("content") for c in chunk.get("choices", [])):
                            first = time.perf_counter()
            except httpx.HTTPError:
                errors += 1
                continue
            end = time.perf_counter()
            latencies.append(end - start)
            ttfts.append((first or end) - start)
            counts.append(used)

    began = time.perf_counter()
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency + 4)) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    wall = time.perf_counter() - began

    def pct(values, q):
        return round(1000 * statistics.quantiles(values, n=100)[q - 1], 1) if len(values) > 1 else None

    return {
        "requests": len(latencies),
        "req_per_s": round(len(latencies) / wall, 3),
        "tokens_per_s": round(sum(counts) / wall, 2),
        "p50_ms": pct(latencies, 50),
        "p99_ms": pct(latencies, 99),
        "ttft_p50_ms": pct(ttfts, 50),
        "mean_completion_tokens": round(statistics.mean(counts), 1) if counts else 0,
        "errors": errors,
        "seconds": round(wall, 2),
    }


def load(url: str, requests: int, tokens: int, levels=LEVELS) -> dict:
    asyncio.run(drive(url, 1, 2, tokens))  # warm-up: first-call costs are not the server's steady state
    return {str(c): asyncio.run(drive(url, c, max(requests, c), tokens)) for c in levels}


# ---- processes ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, proc: subprocess.Popen) -> None:
    import httpx

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited with {proc.returncode}; see its output above")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    sys.exit("the server did not answer /healthz in 180 s")


def serving(cmd: list[str]):
    port = free_port()
    proc = subprocess.Popen(cmd + ["--port", str(port)], env=os.environ | {"TOKENIZERS_PARALLELISM": "false"})
    url = f"http://127.0.0.1:{port}"
    wait_up(url, proc)
    return proc, url


def make_run(root: Path) -> Path:
    """A run folder named `base` holding the bundled model, as tunesmith serve reads runs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.models import zoo
    from tunesmith.models.saved import CAUSAL_LM, save_model

    folder = root / "base"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("name: base\n")
    source = zoo.resolve(MODEL)
    meta = {"method": "none", "kind": CAUSAL_LM, "base_model": MODEL, "base_path": str(source)}
    save_model(AutoModelForCausalLM.from_pretrained(source), AutoTokenizer.from_pretrained(source), meta,
               folder / "model")  # fmt: skip
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=32, help="requests per concurrency level (at least the level)")
    p.add_argument("--tokens", type=int, default=32, help="max_tokens of each request")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--baseline-server", help=argparse.SUPPRESS)  # a model folder: run the baseline server
    p.add_argument("--mode", default="threads", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.baseline_server:
        import uvicorn

        uvicorn.run(baseline_app(args.baseline_server, args.mode), host="127.0.0.1", port=args.port,
                    log_level="warning")  # fmt: skip
        return
    started = datetime.now(UTC).isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        run = make_run(Path(tmp))
        cli = [sys.executable, "-m", "tunesmith.cli", "serve", str(run), "--store", str(Path(tmp) / "s.sqlite"),
               "--max-batch", "32", "--max-tokens", str(args.tokens)]  # fmt: skip
        proc, url = serving(cli)
        try:
            ours = load(url, args.requests, args.tokens)
        finally:
            proc.terminate()
            proc.wait(30)
        baselines = {}
        for mode in ("serial", "threads"):
            base = [sys.executable, __file__, "--baseline-server", str(run / "model"), "--mode", mode]
            proc, url = serving(base)
            try:
                baselines[mode] = load(url, args.requests, args.tokens)
            finally:
                proc.terminate()
                proc.wait(30)
    best = max(baselines, key=lambda m: baselines[m]["32"]["tokens_per_s"])
    out = {
        "benchmark": "serve_load",
        "date": started,
        "model": MODEL,
        "max_tokens": args.tokens,
        "requests_per_level": args.requests,
        "machine": {"cpu": _cpu(), "cores": os.cpu_count()},
        "concurrency": ours,
        "baseline": baselines[best] | {"setting": best},
        "baseline_settings": baselines,
        "throughput_ratio_at_32": round(ours["32"]["tokens_per_s"] / baselines[best]["32"]["tokens_per_s"], 2),
        "ttft_p50_ms_at_1": {"tunesmith": ours["1"]["ttft_p50_ms"], "baseline": baselines[best]["1"]["ttft_p50_ms"]},
        "targets": {"errors": 0, "throughput_ratio_at_32": ">= 4", "ttft_p50_at_1": "<= the baseline's"},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    for level, r in ours.items():
        b = baselines[best][level]
        ours_line = f"tunesmith {r['tokens_per_s']} tok/s, p50 {r['p50_ms']} ms, ttft {r['ttft_p50_ms']} ms"
        print(
            f"concurrency {level}: {ours_line}, errors {r['errors']} | baseline ({best}) {b['tokens_per_s']} tok/s, "
            f"ttft {b['ttft_p50_ms']} ms"
        )
    print(f"throughput_ratio_at_32 {out['throughput_ratio_at_32']}; wrote {args.out}")


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()

"""The HTTP server: OpenAI's chat, completions, embeddings and models endpoints, plus classify, feedback, health
and Prometheus metrics, over the runs it serves. Every response carries its request id (the body's `id` and the
x-request-id header); feedback names it. Errors have OpenAI's shape and name the field at fault.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunesmith.errors import TunesmithError
from tunesmith.infer.generator import Sampling
from tunesmith.infer.output_filter import Held, OutputFilter
from tunesmith.lm.chat import prompt_text
from tunesmith.models.saved import CAUSAL_LM, CLASSIFIER
from tunesmith.serve.batching import Busy, GenerationJob, Outbox, TextJob
from tunesmith.serve.dashboard import dashboard_data
from tunesmith.serve.drift import DriftRule
from tunesmith.serve.metrics import Metrics
from tunesmith.serve.schemas import (
    ChatCompletionRequest,
    ClassifyRequest,
    CompletionRequest,
    EmbeddingRequest,
    FeedbackRequest,
    PromoteRequest,
    RollbackRequest,
)
from tunesmith.serve.served import Limits, Served, load
from tunesmith.serve.store import Store

OPEN = {"/healthz"}  # the only path an API key does not guard


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    kinds = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}
    kind = kinds.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def create_app(
    served: dict[str, Served],
    store: Store,
    *,
    api_key: str | None = None,
    limits: Limits = Limits(),
    log_text: bool = False,
    drift_rule: DriftRule = DriftRule(),
    output_filter: OutputFilter | None = None,
) -> FastAPI:
    app = FastAPI(title="tunesmith", summary="OpenAI-compatible serving of tunesmith runs", version="1")
    metrics = Metrics(served, store, drift_rule)
    app.state.served, app.state.store, app.state.metrics = served, store, metrics

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if api_key and request.url.path not in OPEN:
            given = request.headers.get("authorization", "")
            if given != f"Bearer {api_key}" and request.query_params.get("key") != api_key:  # ?key=: the dashboard
                return _error(401, "a valid API key is needed: send the header 'Authorization: Bearer <key>'",
                              code="invalid_api_key")  # fmt: skip
        size = request.headers.get("content-length")
        if size and size.isdigit() and int(size) > limits.max_body_bytes:
            return _error(413, f"the request body is {size} bytes; at most {limits.max_body_bytes} (--max-body-bytes)")
        response = await call_next(request)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        if first.get("type") == "json_invalid":
            return _error(400, f"the body is not valid JSON: {first.get('msg')}", param=None, code="invalid_json")
        if first.get("type") == "extra_forbidden":
            return _error(400, f"{param}: unsupported field", param=param, code="unsupported_field")
        return _error(400, f"{param or 'body'}: {first.get('msg')}", param=param)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.message, param=exc.param, code=exc.code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(TunesmithError)
    async def user_error(request: Request, exc: TunesmithError):
        return _error(400, str(exc))

    @app.exception_handler(Busy)
    async def busy(request: Request, exc: Busy):
        return _error(429, str(exc), code="queue_full")

    def pick(name: str, kind: str, what: str) -> Served:
        found = served.get(name)
        if found is None:
            raise ApiError(404, f"model {name!r} is not served here; served: {sorted(served)}", param="model",
                           code="model_not_found")  # fmt: skip
        if found.kind != kind:
            raise ApiError(400, f"model {name!r} is a {found.kind} run; {what} needs a {kind} run", param="model")
        return found

    async def record(row: dict) -> None:
        await run_in_threadpool(record_now, row)

    def record_now(row: dict) -> None:
        """Synchronous: a cancelled stream still logs itself."""
        store.log_request(row)
        metrics.observe(row)

    # ---- generation -------------------------------------------------------------------------------------

    def start(model: Served, ids: list[int], body, prefix: str) -> tuple[GenerationJob, str]:
        limit = body.limit
        if limit is not None and limit > limits.max_tokens:
            field = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
            raise ApiError(400, f"{field}: at most {limits.max_tokens} (the server's --max-tokens)", param=field)
        if len(ids) > limits.max_prompt_tokens:
            raise ApiError(400, f"the prompt is {len(ids)} tokens; at most {limits.max_prompt_tokens}",
                           param="messages" if prefix == "chatcmpl" else "prompt")  # fmt: skip
        sampling = Sampling(limit or limits.max_tokens, body.temperature, body.top_p, body.stops)
        job = GenerationJob(ids, sampling, body.n, body.seed, Outbox(asyncio.get_running_loop()),
                            Held(output_filter) if output_filter else None)  # fmt: skip
        model.worker.submit(job)
        return job, f"{prefix}-{uuid.uuid4().hex}"

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        model = pick(body.model, CAUSAL_LM, "a chat completion")
        conversation = body.conversation()
        ids = model.tokenizer(prompt_text(model.tokenizer, conversation), add_special_tokens=False)["input_ids"]
        job, rid = start(model, ids, body, "chatcmpl")
        log = _log_row(rid, "chat", model, conversation if log_text else None, len(ids))
        if body.stream:
            return _sse(rid, job, _chat_chunks(job, rid, model.name), log, record_now, _wants_usage(body))
        replies, reasons, used = await _collect(job)
        choices = [
            {"index": i, "message": {"role": "assistant", "content": r}, "finish_reason": reasons[i]}
            for i, r in enumerate(replies)
        ]
        await record(log | _done(log, job, used, replies[0], log_text))
        return _json(rid, {"id": rid, "object": "chat.completion", "created": int(log["time"]), "model": model.name,
                           "choices": choices, "usage": _usage(len(ids), used)})  # fmt: skip

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        model = pick(body.model, CAUSAL_LM, "a completion")
        ids = model.tokenizer(body.prompt, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ApiError(400, "prompt: no tokens", param="prompt")
        job, rid = start(model, ids, body, "cmpl")
        log = _log_row(rid, "completions", model, [body.prompt] if log_text else None, len(ids))
        if body.stream:
            return _sse(rid, job, _text_chunks(job, rid, model.name), log, record_now, _wants_usage(body))
        replies, reasons, used = await _collect(job)
        choices = [
            {"index": i, "text": r, "finish_reason": reasons[i], "logprobs": None} for i, r in enumerate(replies)
        ]
        await record(log | _done(log, job, used, replies[0], log_text))
        return _json(rid, {"id": rid, "object": "text_completion", "created": int(log["time"]), "model": model.name,
                           "choices": choices, "usage": _usage(len(ids), used)})  # fmt: skip

    # ---- encoders ------------------------------------------------------------------------------------------

    async def run_texts(model: Served, kind: str, texts: list[str], param: str) -> list:
        if len(texts) > limits.max_texts:
            raise ApiError(413, f"{param}: {len(texts)} texts; at most {limits.max_texts} per request", param=param)
        blank = [i for i, t in enumerate(texts) if not t.strip()]
        if blank:
            raise ApiError(400, f"{param}[{blank[0]}]: the text is empty", param=param)
        loop = asyncio.get_running_loop()
        job = TextJob([(kind, t) for t in texts], loop.create_future(), loop)
        model.worker.submit(job)
        try:
            return await job.future
        except asyncio.CancelledError:
            job.cancelled = True
            raise

    async def encoder_call(body, kind: str, endpoint: str, prefix: str, what: str):
        """A classifier run's texts through its worker: the model, request id, log row and one result per text."""
        model = pick(body.model, CLASSIFIER, what)
        if kind == "embed" and (why := model.classifier.no_embeddings()):
            raise ApiError(400, why, param="model")
        rid = f"{prefix}-{uuid.uuid4().hex}"
        log = _log_row(rid, endpoint, model, body.texts if log_text else None, None)
        return model, rid, log, await run_texts(model, kind, body.texts, "input")

    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest):
        model, rid, log, results = await encoder_call(body, "label", "classification", "clf", "classification")
        data = []
        for i, r in enumerate(results):
            probs = dict(sorted(r["probs"].items(), key=lambda kv: -kv[1])[: body.top_k or len(r["probs"])])
            data.append({"index": i, "label": r["label"], "confidence": r["confidence"], "probs": probs})
        log |= {"prediction": [d["label"] for d in data], "confidence": sum(d["confidence"] for d in data) / len(data)}
        await record(log | {"latency_ms": _ms(log["time"]), "status": 200})
        return _json(rid, {"id": rid, "object": "classification", "created": int(log["time"]), "model": model.name,
                           "labels": model.labels, "data": data})  # fmt: skip

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest):
        model, rid, log, vectors = await encoder_call(body, "embed", "embeddings", "embd", "embeddings")
        tokens = sum(len(model.classifier.tokenizer(t)["input_ids"]) for t in body.texts)
        await record(log | {"latency_ms": _ms(log["time"]), "status": 200, "prompt_tokens": tokens})
        data = [{"object": "embedding", "index": i, "embedding": _encoded(v, body.encoding_format)}
                for i, v in enumerate(vectors)]  # fmt: skip
        return _json(rid, {"object": "list", "id": rid, "model": model.name, "data": data,
                           "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})  # fmt: skip

    # ---- the rest ------------------------------------------------------------------------------------------

    @app.post("/v1/feedback")
    async def feedback(body: FeedbackRequest):
        request = await run_in_threadpool(store.request, body.request_id)
        if request is None:
            raise ApiError(404, f"request_id: no request {body.request_id!r} was logged here", param="request_id")
        model = served.get(request["model"])
        texts = len(json.loads(request["prediction"])) if request["prediction"] else 1
        if body.index is not None and body.index >= texts:
            raise ApiError(
                400, f"index: the request had {texts} text(s); index {body.index} is past them", param="index"
            )
        if body.label is not None and model is not None and model.kind == CLASSIFIER and body.label not in model.labels:
            raise ApiError(400, f"label: {body.label!r} is not one of the model's labels {model.labels}", param="label")
        fid = await run_in_threadpool(store.add_feedback, body.request_id, request["model"], body.columns())
        metrics.feedback(request["model"], body)
        return {"id": fid, "object": "feedback", "request_id": body.request_id, "stored": True}

    @app.get("/v1/models")
    async def models():
        data = [{"id": m.name, "object": "model", "created": int(m.run_dir.stat().st_mtime), "owned_by": "tunesmith",
                 "kind": m.kind, "version": m.version, "method": m.meta.get("method"),
                 "base_model": m.meta.get("base_model"), "labels": m.labels or None}
                for m in served.values()]  # fmt: skip
        return {"object": "list", "data": data}

    history: dict[str, list[Path]] = {}  # per served name, the run folders it served before, latest last

    async def switch(name: str, run: str | Path) -> dict:
        old = served.get(name)
        if old is None:
            raise ApiError(404, f"model {name!r} is not served here; served: {sorted(served)}", param="model")
        new = await run_in_threadpool(load, run, limits)
        if new.kind != old.kind:
            new.worker.retire()
            raise ApiError(400, f"{run} is a {new.kind} run; {name!r} serves a {old.kind}", param="run")
        new.name = name
        served[name] = new  # requests already taken finish on the old model; new ones go to the new
        metrics.watch(name, new)
        old.worker.retire()
        return {"model": name, "version": new.version, "previous": old.version}

    @app.post("/admin/promote")
    async def promote(body: PromoteRequest):
        """Serve another run under a served name, with no request failing during the switch."""
        before = served.get(body.model)
        out = await switch(body.model, body.run)
        history.setdefault(body.model, []).append(before.run_dir)
        return out

    @app.post("/admin/rollback")
    async def rollback(body: RollbackRequest):
        """Serve again the run a name served before its last promotion."""
        if not history.get(body.model):
            raise ApiError(409, f"model {body.model!r} was never promoted here: nothing to roll back to",
                           param="model")  # fmt: skip
        out = await switch(body.model, history[body.model][-1])
        history[body.model].pop()
        return out

    page = (Path(__file__).parent / "dashboard.html").read_text()

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard_page(request: Request):
        key = request.query_params.get("key")
        return HTMLResponse(page.replace("{{ key_query }}", f"key={quote(key)}" if key else ""))

    @app.get("/dashboard/plotly.min.js", include_in_schema=False)
    async def plotly_js():
        import plotly

        return FileResponse(Path(plotly.__file__).parent / "package_data" / "plotly.min.js",
                            media_type="text/javascript")  # fmt: skip

    @app.get("/dashboard/data")
    async def dashboard_data_now():
        return await run_in_threadpool(dashboard_data, served, store, metrics)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "models": sorted(served)}

    @app.get("/metrics")
    async def prometheus():
        body = await run_in_threadpool(metrics.render)
        return PlainTextResponse(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/drift")
    async def drift_now():
        return {
            name: await run_in_threadpool(metrics.drift_of, m) for name, m in served.items() if m.kind == CLASSIFIER
        }

    return app


# ---- helpers ----------------------------------------------------------------------------------------------------


def _error(status: int, message: str, *, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status)


def _json(rid: str, body: dict) -> JSONResponse:
    return JSONResponse(body, headers={"x-request-id": rid})


def _ms(since: float) -> float:
    return round((time.time() - since) * 1000, 2)


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _encoded(vector: list[float], how: str) -> list[float] | str:
    if how == "float":
        return vector
    import base64

    import numpy as np

    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


def _wants_usage(body) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


def _log_row(rid: str, endpoint: str, model: Served, texts: list | None, prompt_tokens: int | None) -> dict:
    return {"id": rid, "time": time.time(), "endpoint": endpoint, "model": model.name, "run_path": model.version,
            "prompt": texts, "prompt_tokens": prompt_tokens, "status": 200}  # fmt: skip


def _done(log: dict, job: GenerationJob, used: int, reply: str, log_text: bool) -> dict:
    return {"latency_ms": _ms(log["time"]), "completion_tokens": used, "reply_chars": len(reply),
            "reply": reply if log_text else None, "filtered": job.held.refused if job.held else None}  # fmt: skip


async def _collect(job: GenerationJob) -> tuple[list[str], list[str], int]:
    """The whole reply of every choice, their finish reasons and the tokens generated."""
    texts, reasons, used, done = [""] * job.n, [""] * job.n, 0, False
    try:
        async for event in _events(job):
            if event[0] == "text":
                texts[event[1]] += event[2]
            else:
                reasons[event[1]], used = event[2], used + event[3]
        done = True
    finally:
        if not done:
            job.outbox.cancelled = True  # the client went away, or the model failed: free the rows
    return [t.strip() for t in texts], reasons, used


async def _events(job: GenerationJob) -> AsyncIterator[tuple]:
    """The worker's events for the job. Under an output filter, a reply's text is held until it ends and then
    given whole, or the refusal in its place with finish_reason "content_filter" (OpenAI's)."""
    ended = 0
    while ended < job.n:
        event = await job.outbox.events.get()
        if event[0] == "error":
            raise ApiError(500, event[1], code="generation_failed")
        ended += event[0] == "end"
        if job.held is None:
            yield event
        elif event[0] == "text":
            job.held.feed(event[1], event[2])
        else:
            verdict = await run_in_threadpool(job.held.release, event[1])
            if verdict.text:
                yield ("text", event[1], verdict.text)
            yield event if verdict.reason is None else ("end", event[1], "content_filter", *event[3:])


async def _chat_chunks(job: GenerationJob, rid: str, name: str):
    created = int(time.time())

    def chunk(choice: int, delta: dict, reason: str | None = None) -> dict:
        return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": name,
                "choices": [{"index": choice, "delta": delta, "finish_reason": reason}]}  # fmt: skip

    for c in range(job.n):
        yield chunk(c, {"role": "assistant", "content": ""}), None
    async for event in _events(job):
        if event[0] == "text":
            yield chunk(event[1], {"content": event[2]}), event
        else:
            yield chunk(event[1], {}, event[2]), event


async def _text_chunks(job: GenerationJob, rid: str, name: str):
    created = int(time.time())
    async for event in _events(job):
        text, reason = (event[2], None) if event[0] == "text" else ("", event[2])
        choice = {"index": event[1], "text": text, "finish_reason": reason, "logprobs": None}
        yield {"id": rid, "object": "text_completion", "created": created, "model": name, "choices": [choice]}, event


def _sse(rid: str, job: GenerationJob, chunks, log: dict, record, include_usage: bool) -> StreamingResponse:
    """Server-sent events: one `data:` line per chunk, the usage chunk if asked, then `data: [DONE]`. The request is
    logged before [DONE], so that feedback may name it as soon as the stream ends. A client that goes away
    cancels the stream, which frees its rows in the batch."""

    async def stream():
        reply, used, status = "", 0, 499  # 499: the client closed the stream (nginx's code)
        try:
            async for payload, event in chunks:
                if event is not None and event[0] == "text" and event[1] == 0:
                    reply += event[2]
                if event is not None and event[0] == "end":
                    used += event[3]
                yield f"data: {json.dumps(payload)}\n\n"
            status = 200
            if include_usage:
                yield f"data: {json.dumps({'id': rid, 'choices': [], 'usage': _usage(log['prompt_tokens'], used)})}\n\n"
        except ApiError as err:
            status = err.status
            yield f"data: {json.dumps(error_body(err.status, err.message, err.param, err.code))}\n\n"
        finally:
            if status != 200:
                job.outbox.cancelled = True
            record(log | _done(log, job, used, reply.strip(), log["prompt"] is not None) | {"status": status})
        yield "data: [DONE]\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"x-request-id": rid})

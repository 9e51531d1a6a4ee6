import json

import pytest

from tests.conftest import sft_config
from tunesmith import api
from tunesmith.errors import TunesmithError


@pytest.fixture(scope="module")
def lm_run(tiny_lm, fixtures, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export-lm")
    return api.train(sft_config(tiny_lm, tmp, fixtures / "oasst_20.jsonl", train={"epochs": 1}), quiet=True)


def prompts_of(run) -> list[str]:
    from tunesmith.data.prepared import read_rows
    from tunesmith.lm.chat import as_messages

    return [as_messages(r)[0]["content"] for r in read_rows(run / "data")["test"]]


TEXTS = ["a gorgeous, witty film", "dull and far too long", "it is fine"]


@pytest.mark.parametrize("fmt", ["onnx", "int8", "merged"])
def test_classifier_exports_agree_with_the_run_and_load_for_predict(classifier_run, fmt):
    res = api.export(classifier_run, fmt)
    folder = classifier_run / "exports" / fmt
    assert json.loads((folder / "export.json").read_text()) == res
    assert res["check"]["agreement"] >= 0.98 and res["check"]["measure"].startswith("labels of the")
    assert res["check"]["p50_ms_source"] > 0 and res["check"]["p50_ms_export"] > 0
    report = (classifier_run / "report.html").read_text()
    assert "Release: exports of this run" in report and f"<td>{fmt}</td>" in report
    ours, theirs = api.predict(classifier_run, TEXTS), api.predict(classifier_run, TEXTS, fmt=fmt)
    assert [r["label"] for r in ours] == [r["label"] for r in theirs]
    tolerance = 0.05 if fmt == "int8" else 1e-4
    for a, b in zip(ours, theirs):
        assert abs(a["confidence"] - b["confidence"]) < tolerance
    if fmt == "int8":
        onnx = api.export(classifier_run, "onnx")
        assert res["size_mb"] < onnx["size_mb"]  # int8 weights in the graph, not float32
    if fmt == "merged":  # a plain transformers folder: no adapter left
        assert not (folder / "adapter_config.json").exists() and (folder / "model.safetensors").is_file()


@pytest.mark.parametrize("fmt", ["gguf", "merged", "int8"])
def test_causal_lm_exports_give_the_greedy_replies_of_the_run(lm_run, fmt):
    res = api.export(lm_run, fmt, gguf_type="f32")
    assert res["check"]["measure"].startswith("greedy tokens") and res["check"]["agreement"] >= 0.5
    if fmt in ("gguf", "merged"):  # float32 GGUF and a copied folder are exact
        assert res["check"]["agreement"] == 1.0 and res["check"]["exact_replies"] == 1.0
    assert any(s["source"] for s in res["check"]["samples"])  # replies to compare, not empty strings
    assert res["check"]["seconds_export"] > 0 and not (lm_run / "report_error.log").exists()
    assert f"<td>{fmt}" in (lm_run / "report.html").read_text()
    if fmt != "int8":
        prompts = prompts_of(lm_run)
        ours = api.generate(lm_run, prompts, max_new_tokens=8)
        assert api.generate(lm_run, prompts, max_new_tokens=8, fmt=fmt) == ours


def test_gguf_file_holds_llama_metadata_tokenizer_and_quantised_weights(lm_run):
    import gguf

    res = api.export(lm_run, "gguf", gguf_type="q8_0", min_agreement=0.0)
    reader = gguf.GGUFReader(lm_run / "exports" / "gguf" / "model.gguf")
    fields = reader.fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert "<|im_end|>" in fields["tokenizer.ggml.tokens"].contents()
    assert "im_start" in fields["tokenizer.chat_template"].contents()
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    assert res["gguf_type"] == "q8_0"


def test_bad_exports_name_the_run_and_what_would_work(classifier_run, lm_run, tmp_path):
    with pytest.raises(TunesmithError, match="cannot export a classifier .* as gguf: GGUF holds .*onnx, int8, merged"):
        api.export(classifier_run, "gguf")
    with pytest.raises(TunesmithError, match="cannot export a causal-lm .* as onnx"):
        api.export(lm_run, "onnx")
    with pytest.raises(TunesmithError, match="'tflite' is not one of onnx, int8, gguf, merged"):
        api.export(classifier_run, "tflite")
    with pytest.raises(TunesmithError, match="has no onnx export; make it with `tunesmith export"):
        api.predict(lm_run, ["x"], fmt="onnx")


def test_an_export_below_the_agreement_floor_writes_nothing(lm_run):
    folder = lm_run / "exports" / "int8"
    before = sorted(p.name for p in folder.iterdir()) if folder.exists() else None
    with pytest.raises(TunesmithError, match="agrees with the run's model on .* nothing was written"):
        api.export(lm_run, "int8", min_agreement=1.01)
    assert (sorted(p.name for p in folder.iterdir()) if folder.exists() else None) == before
    assert not [p for p in folder.parent.iterdir() if p.name.endswith(".tmp")]


def test_serve_loads_exports_of_both_kinds(classifier_run, lm_run, tmp_path):
    import httpx

    from tests.serve.conftest import Running

    api.export(classifier_run, "int8")
    api.export(lm_run, "gguf", gguf_type="f32")
    store = tmp_path / "serve.sqlite"
    for run, fmt in ((classifier_run, "int8"), (lm_run, "gguf")):
        running = Running(api.serve_app([run], store=store, fmt=fmt, max_tokens=16))
        try:
            name = next(iter(running.app.state.served))
            if fmt == "int8":
                r = httpx.post(running.url + "/v1/classify", json={"model": name, "input": TEXTS}, timeout=60)
                want = [p["label"] for p in api.predict(classifier_run, TEXTS, fmt="int8")]
                assert [d["label"] for d in r.json()["data"]] == want
                r = httpx.post(running.url + "/v1/embeddings", json={"model": name, "input": TEXTS}, timeout=60)
                assert r.status_code == 400 and "graph gives labels only" in r.json()["error"]["message"]
            else:
                prompt = prompts_of(lm_run)[0]
                body = {
                    "model": name,
                    "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": 8,
                    "temperature": 0,
                }
                r = httpx.post(running.url + "/v1/chat/completions", json=body, timeout=60)
                want = api.generate(lm_run, [prompt], max_new_tokens=8)[0]
                assert want and r.status_code == 200 and r.json()["choices"][0]["message"]["content"].strip() == want
        finally:
            running.stop()

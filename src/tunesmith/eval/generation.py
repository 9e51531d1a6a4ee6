"""Scores of generated text against references: ROUGE-1/2/L (rouge-score), BLEU (sacrebleu), exact match.

Every score is 0-100. With several references per example (DialogSum's test set has three), ROUGE takes the
best reference per example and BLEU uses them all, as their authors do.
"""

from __future__ import annotations

import re

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def _normal(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


def text_metrics(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    import sacrebleu
    from rouge_score import rouge_scorer

    if len(predictions) != len(references) or not predictions:
        raise ValueError("text_metrics needs one list of references per prediction, and at least one prediction")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    rouge = {k: 0.0 for k in ROUGE_TYPES}
    for pred, refs in zip(predictions, references):
        scores = [scorer.score(ref, pred) for ref in refs]
        for k in ROUGE_TYPES:
            rouge[k] += max(s[k].fmeasure for s in scores)
    streams = [[refs[i] if i < len(refs) else refs[0] for refs in references] for i in range(max(map(len, references)))]
    bleu = sacrebleu.corpus_bleu(predictions, streams).score
    exact = sum(any(_normal(pred) == _normal(r) for r in refs) for pred, refs in zip(predictions, references))
    n = len(predictions)
    return {**{k: 100 * v / n for k, v in rouge.items()}, "bleu": bleu, "exact_match": 100 * exact / n}

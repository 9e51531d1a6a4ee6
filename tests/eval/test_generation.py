import pytest

from tunesmith.eval.generation import text_metrics


def test_identical_text_scores_100_and_unrelated_text_near_0():
    same = text_metrics(["the cat sat on the mat"], [["The cat sat on the mat."]])
    assert same["rouge1"] == pytest.approx(100) and same["rougeL"] == pytest.approx(100) and same["exact_match"] == 100
    other = text_metrics(["dogs bark loudly"], [["the cat sat on the mat"]])
    assert other["rouge1"] == 0 and other["exact_match"] == 0 and other["bleu"] < 1


def test_rouge_takes_the_best_of_several_references():
    one = text_metrics(["a cat sat on a mat"], [["the dog ran"]])
    many = text_metrics(["a cat sat on a mat"], [["the dog ran", "a cat sat on a mat"]])
    assert one["rougeL"] < many["rougeL"] == pytest.approx(100)
    with pytest.raises(ValueError):
        text_metrics(["x"], [])

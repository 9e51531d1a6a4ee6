import numpy as np
import pytest

from tunesmith.eval.calibration import choose_temperature, fit_temperature, reliability, softmax
from tunesmith.eval.metrics import classification_report


def test_ece_of_a_perfectly_calibrated_and_an_overconfident_model():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, 20000)
    correct = rng.uniform(size=conf.size) < conf  # right exactly as often as it claims
    labels = np.where(correct, 0, 1)
    probs = np.stack([conf, 1 - conf], 1)
    assert reliability(probs, labels)["ece"] < 0.02
    over = np.stack([np.full(1000, 0.99), np.full(1000, 0.01)], 1)
    assert reliability(over, np.r_[np.zeros(600, int), np.ones(400, int)])["ece"] == pytest.approx(0.39, abs=1e-6)


def test_temperature_scaling_fixes_overconfidence_and_keeps_argmax():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 3000)
    logits = rng.normal(size=(3000, 3))
    logits[np.arange(3000), y] += 1.0
    sharp = logits * 4  # overconfident by a factor 4
    t = fit_temperature(sharp, y)
    assert t == pytest.approx(4.0, rel=0.15)
    assert (softmax(sharp, t).argmax(1) == sharp.argmax(1)).all()
    assert reliability(softmax(sharp, t), y)["ece"] < reliability(softmax(sharp), y)["ece"] / 3


def test_report_keys_and_confusion():
    rep = classification_report(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0]), ["a", "b", "c"])
    assert rep["accuracy"] == pytest.approx(0.6) and rep["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert rep["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_a_temperature_is_kept_only_where_held_out_ece_improves():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 600)
    logits = rng.normal(size=(600, 3))
    logits[np.arange(600), y] += 1.0
    sharp = choose_temperature(logits * 4, y, bins=15)
    assert sharp["chosen"] == "fitted" and sharp["cv_ece_fitted"] < sharp["cv_ece_t1"] and sharp["temperature"] > 2
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, 1000)  # already calibrated: a fitted T only adds noise
    labels = np.where(rng.uniform(size=1000) < conf, 0, 1)
    calibrated = np.log(np.stack([conf, 1 - conf], 1))
    kept = choose_temperature(calibrated, labels, bins=15)
    assert kept["temperature"] == 1.0 and kept["chosen"] == "none" and "did not help" in kept["why"]
    assert choose_temperature(calibrated[:15], labels[:15], bins=15)["why"].startswith("15 validation rows")

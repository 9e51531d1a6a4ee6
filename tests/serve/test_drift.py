import json

from tunesmith.serve.drift import DriftRule, drift

REF = {"neg": 0.5, "pos": 0.5}


def rows(labels, confidence=0.9):
    return [{"prediction": json.dumps([label]), "confidence": confidence} for label in labels]


def test_drift_flags_moved_label_shares_and_falling_confidence():
    rule = DriftRule(min_predictions=10, max_distance=0.2, max_confidence_drop=0.1)
    steady = drift(rows(["neg", "pos"] * 10), REF, 0.9, rule)
    assert steady["distance"] == 0.0 and not steady["flagged"]
    moved = drift(rows(["neg"] * 18 + ["pos"] * 2), REF, 0.9, rule)
    assert moved["distance"] == 0.4 and moved["flagged"] and "label shares" in moved["why"]
    unsure = drift(rows(["neg", "pos"] * 10, confidence=0.6), REF, 0.9, rule)
    assert unsure["flagged"] and "confidence fell" in unsure["why"]


def test_too_few_predictions_say_so_without_flagging():
    out = drift(rows(["neg"] * 3), REF, 0.9, DriftRule(min_predictions=10))
    assert not out["flagged"] and out["distance"] is None and "3 predictions" in out["why"]

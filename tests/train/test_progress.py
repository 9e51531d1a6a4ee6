from tunesmith.train.progress import Progress


def test_in_a_log_progress_is_one_plain_line_every_tenth(capsys):
    progress = Progress(100)  # pytest's stderr is not a terminal, as a CI log or `> train.log` is not
    for step in range(1, 101):
        progress.update(step, loss=1.0 / step, speed=50.0, metrics={"reward_margin": 0.5})
    progress.close()
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and len(lines) == 10 and lines[0].startswith("train step 10/100  loss 0.1000")
    assert lines[-1].startswith("train step 100/100") and "reward_margin 0.5000" in lines[-1]

import io
import time

import common


def test_progress_bar_in_a_log_file_draws_only_its_first_and_last_line():
    log = io.StringIO()  # not a terminal
    with common.progress_bar(total=40, file=log) as bar:
        for _ in range(40):
            time.sleep(0.01)  # 0.4 s: four redraws at a terminal's rate
            bar.update(1)
    assert log.getvalue().count('\r') == 2, log.getvalue()


def test_progress_bar_in_a_log_file_is_not_forced_to_redraw_between_its_minutes():
    with common.progress_bar(total=1, file=io.StringIO()) as bar:  # tqdm's monitor thread redraws after maxinterval
        assert bar.maxinterval >= bar.mininterval == 60

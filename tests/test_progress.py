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


def test_finished_bar_is_drawn_once_and_again_after_a_message_above_it():
    log = io.StringIO()
    with common.progress_bar(total=2, file=log) as bar:
        bar.update(2)
        bar.set_postfix(loss=1.0)  # a closing log step's figures: drawn
        bar.refresh()  # the same finished bar: not drawn again, nor by close()
        bar.write('step 2: evaluated', file=log)  # clears the bar, prints, draws it again
    lines = [line for line in log.getvalue().replace('\r', '\n').split('\n') if '100%' in line]
    assert len(lines) == 2 and all('loss=1]' in line for line in lines), log.getvalue()
    assert log.getvalue().rindex('step 2: evaluated') < log.getvalue().rindex('100%')

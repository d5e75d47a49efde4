"""ThrottledProgress: at most N updates per second within a stage; stage changes and ends always pass."""

import pytest

from KDSegmentationLib.progress import ProgressEvent, Stage
from KDSegmentationLib.progress_throttle import ThrottledProgress, throttle_progress


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_one_second_of_chunk_events_gives_at_most_ten_updates():
    clock, seen = _Clock(), []
    throttled = ThrottledProgress(seen.append, max_per_second=10, clock=clock)
    total = 1000
    for done in range(total):  # 1000 events spread over one second
        throttled(ProgressEvent(Stage.DOWNLOADING, done, total))
        clock.now += 0.001
    assert 9 <= len(seen) <= 10
    gaps = [b.current - a.current for a, b in zip(seen, seen[1:])]
    assert min(gaps) >= 99  # >= 0.1 s apart
    throttled(ProgressEvent(Stage.DOWNLOADING, total, total))  # the last one always passes
    assert seen[-1].current == total


def test_stage_changes_pass_at_once_and_none_stays_none():
    clock, seen = _Clock(), []
    throttled = ThrottledProgress(seen.append, clock=clock)
    for stage in (Stage.DOWNLOADING, Stage.LOADING, Stage.PREPROCESSING, Stage.INFERRING):
        throttled(ProgressEvent(stage))
        throttled(ProgressEvent(stage, 1, 10))  # same instant, same stage: dropped
    assert [e.stage for e in seen] == [Stage.DOWNLOADING, Stage.LOADING, Stage.PREPROCESSING, Stage.INFERRING]
    assert throttle_progress(None) is None
    assert throttle_progress(throttled) is throttled
    with pytest.raises(ValueError, match="max_per_second"):
        ThrottledProgress(seen.append, max_per_second=0)

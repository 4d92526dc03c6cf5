"""The copiers' outcome recorder (gateway/copier.py ``Recorder``): everything handed
over is written, in as few transactions as were waiting; a failed write is tried
again; what comes after the stop is written by whoever hands it over; a full backlog
makes a copier wait, not drop."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

import gateway.copier as copier
from gateway.copier import Outcome, Recorder


class Counting(Recorder):
    """A recorder whose writes are counted instead of going to a roster."""

    def __init__(self, fail: int = 0, pause: float = 0.0) -> None:
        super().__init__(engine=None, worker="gw")  # type: ignore[arg-type]
        self.written: list[str] = []
        self.writes = 0
        self.fail = fail
        self.pause = pause
        self.lock = threading.Lock()

    def write(self, groups: Sequence[tuple[str, list[Outcome]]]) -> None:
        time.sleep(self.pause)
        with self.lock:
            if self.fail:
                self.fail -= 1
                raise RuntimeError("database is locked")
            self.writes += 1
            self.written.extend(outcome for _w, outcomes in groups for outcome in outcomes)  # type: ignore[misc]


def outcomes(name: str, count: int) -> list[Any]:
    return [f"{name}-{n}" for n in range(count)]


def test_everything_handed_over_is_written_once_and_in_few_transactions() -> None:
    recorder = Counting(pause=0.01)
    recorder.start()
    threads = [
        threading.Thread(
            target=lambda n=n: [
                recorder.hand_over(f"c{n}", outcomes(f"c{n}.{k}", 10)) for k in range(20)
            ]
        )
        for n in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    recorder.stop()
    assert sorted(recorder.written) == sorted(
        f"c{n}.{k}-{i}" for n in range(8) for k in range(20) for i in range(10)
    )
    assert recorder.writes < 160  # groups waiting together went in one write


def test_a_failed_write_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(copier, "RECORD_RETRY_SECONDS", (0.01, 0.01, 0.01))
    recorder = Counting(fail=2)
    recorder.start()
    recorder.hand_over("c0", outcomes("a", 3))
    recorder.stop()
    assert recorder.written == outcomes("a", 3)


def test_outcomes_after_the_stop_are_written_by_the_copier() -> None:
    recorder = Counting()
    recorder.start()
    recorder.stop()
    recorder.hand_over("c0", outcomes("late", 2))
    assert recorder.written == outcomes("late", 2)


def test_a_full_backlog_makes_the_copier_wait_not_drop() -> None:
    recorder = Counting(pause=0.05)
    recorder.start()
    for k in range(copier.RECORDER_BACKLOG * 3):
        recorder.hand_over("c0", outcomes(f"k{k}", 1))
    recorder.stop()
    assert len(recorder.written) == copier.RECORDER_BACKLOG * 3

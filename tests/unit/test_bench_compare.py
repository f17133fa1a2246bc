"""The hand-tuned multiple-ack candidate's bookkeeping, and compare_otel's ratio tables."""

from __future__ import annotations

from benchmarks import compare_otel, throughput
from benchmarks.consumers.raw_aiopika_multi import MultipleAcker


def test_a_multiple_ack_goes_out_every_batch_for_the_highest_tag_all_below_are_done() -> None:
    acker = MultipleAcker(batch=3, expected=100)
    assert acker.done(1) is None
    assert acker.done(2) is None
    assert acker.done(3) == 3
    assert [acker.done(tag) for tag in (4, 5, 6)] == [None, None, 6]


def test_a_multiple_ack_never_covers_a_delivery_still_in_process() -> None:
    acker = MultipleAcker(batch=3, expected=100)
    # 2 is still being processed: the batch is full, but only 1 may be acked.
    assert acker.done(1) is None
    assert acker.done(3) is None
    assert acker.done(4) == 1
    # 2, 3 and 4 are done, not acked: a batch, up to 4 now that 2 is done.
    assert acker.done(2) == 4
    assert [acker.done(tag) for tag in (6, 7, 8)] == [None, None, None]  # 5 is missing
    assert acker.done(5) == 8


def test_a_partial_batch_is_flushed_at_the_expected_count_or_by_take() -> None:
    acker = MultipleAcker(batch=100, expected=5)
    assert [acker.done(tag) for tag in (2, 1, 3, 4)] == [None, None, None, None]
    assert acker.done(5) == 5  # the run's last message
    flushed = MultipleAcker(batch=100, expected=1_000)
    flushed.done(1)
    flushed.done(3)
    assert flushed.take() == 1  # the timer's flush: what is done up to the floor
    assert flushed.take() is None  # nothing new since
    flushed.done(2)
    assert flushed.take() == 3


def test_compare_otel_runs_every_baseline_and_renders_both_ratio_tables() -> None:
    assert {"raw_aiopika", "raw_aiopika_otel", "raw_aiopika_multi"} <= set(compare_otel.CANDIDATES)
    compare_otel.register()
    assert throughput.CANDIDATES["raw_aiopika_multi"] == ("raw_aiopika_multi", ())
    runs = [
        {"round": 1, "candidate": "raw_aiopika_otel", "msgs_per_s": 100.0},
        {"round": 1, "candidate": "raw_aiopika_multi", "msgs_per_s": 200.0},
        {"round": 1, "candidate": "foxwork_bare", "msgs_per_s": 300.0},
    ]
    names = ["raw_aiopika_otel", "raw_aiopika_multi", "foxwork_bare"]
    data = {
        "ratio_to_raw_otel": compare_otel.ratios(runs, names, "raw_aiopika_otel"),
        "ratio_to_raw_multi": compare_otel.ratios(runs, names, "raw_aiopika_multi"),
    }
    assert data["ratio_to_raw_multi"]["foxwork_bare"]["median"] == 1.5
    table = compare_otel.render_ratios(data)
    assert "x raw_aiopika_multi" in table
    bare = next(line for line in table.splitlines() if line.startswith("foxwork_bare"))
    assert bare.split()[1:4:2] == ["3.00", "1.50"]

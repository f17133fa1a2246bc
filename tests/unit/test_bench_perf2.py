"""The benchmarks of compare_otel, failure_storm, dlq_tools and startup: their options, the
arithmetic of their reports, and the start-up pool in one in-memory pass."""

from __future__ import annotations

import pytest

from benchmarks import compare_otel, dlq_tools, failure_storm, startup, throughput
from foxwork.backends import MemoryBackend


def test_compare_otel_quick_is_small_and_registers_the_candidate() -> None:
    args = compare_otel.parse(["--quick"])
    assert (args.messages, args.rounds, args.warmup) == (5_000, 2, 0)
    compare_otel.register()
    assert throughput.CANDIDATES["raw_aiopika_otel"] == ("raw_aiopika_otel", ())


def test_compare_otel_alternates_the_order_and_compares_within_a_round() -> None:
    names = ["a", "b", "c"]
    assert compare_otel.round_order(names, 1) == ["a", "b", "c"]
    assert compare_otel.round_order(names, 2) == ["c", "b", "a"]
    runs = [
        {"round": 1, "candidate": "a", "msgs_per_s": 100.0},
        {"round": 1, "candidate": "b", "msgs_per_s": 50.0},
        {"round": 2, "candidate": "a", "msgs_per_s": 200.0},
        {"round": 2, "candidate": "b", "msgs_per_s": 150.0},
        {"round": 3, "candidate": "b", "msgs_per_s": 1.0},  # no base in round 3
    ]
    ratio = compare_otel.ratios(runs, ["b"], "a")["b"]
    assert (ratio["min"], ratio["max"]) == (0.5, 0.75)


def test_failure_storm_reads_message_numbers_and_delay_errors() -> None:
    assert failure_storm.number("r2-1234") == 1234
    assert failure_storm.number("no-digits") == -1
    timings = failure_storm.Timings()
    timings.failed_at.update({1: 10.0, 2: 20.0, 3: 30.0})
    timings.back_at.update({1: 10.25, 2: 20.2})  # 3 never came back
    assert sorted(round(e, 6) for e in timings.errors_ms()) == [0.0, 50.0]


def test_failure_storm_quick_and_child_arguments() -> None:
    args = failure_storm.parse(["--quick", "--mode", "paced"])
    assert (args.messages, args.paced_messages, args.rounds) == (3_000, 300, 1)
    assert args.candidates == list(failure_storm.CANDIDATES)
    assert failure_storm.parse([]).messages == 50_000
    with pytest.raises(SystemExit):
        failure_storm.parse(["--child", "handwritten", "--url", "amqp://x/"])


def test_failure_storm_candidates_option() -> None:
    args = failure_storm.parse(["--candidates", "handwritten, foxwork_retry,handwritten"])
    assert args.candidates == ["handwritten", "foxwork_retry"]
    with pytest.raises(SystemExit):
        failure_storm.parse(["--candidates", "foxwork_full,celery"])
    with pytest.raises(SystemExit):
        failure_storm.parse(["--candidates", ","])
    assert set(failure_storm.STARTERS) == set(failure_storm.CANDIDATES)
    assert failure_storm.round_order(["a", "b", "c"], 1) == ["a", "b", "c"]
    assert failure_storm.round_order(["a", "b", "c"], 2) == ["c", "b", "a"]


def test_failure_storm_ratios_compare_within_a_round_and_mode() -> None:
    def run(round_: int, candidate: str, rate: float) -> dict[str, object]:
        return {"mode": "backlog", "round": round_, "candidate": candidate, "msgs_per_s": rate}

    runs = [
        run(1, "handwritten", 100.0),
        run(1, "foxwork_retry", 150.0),
        run(1, "foxwork_full", 90.0),
        run(1, "handwritten_otel", 60.0),
        run(2, "handwritten", 200.0),
        run(2, "foxwork_retry", 240.0),
        run(2, "foxwork_full", 1.0) | {"error": "timed out"},  # a failed run counts nowhere
        run(3, "foxwork_retry", 999.0),  # no hand-written run in round 3
        {"mode": "paced", "round": 1, "candidate": "handwritten", "msgs_per_s": 1.0},
    ]
    out = failure_storm.ratios(runs, "backlog")
    assert out["foxwork_retry / handwritten"] == {
        "median": pytest.approx(1.35),
        "min": pytest.approx(1.2),
        "max": pytest.approx(1.5),
        "rounds": 2,
    }
    assert out["foxwork_full / handwritten_otel"]["median"] == pytest.approx(1.5)
    assert out["foxwork_full / handwritten"]["rounds"] == 1
    assert out["foxwork_full / handwritten"]["median"] == pytest.approx(0.9)
    assert failure_storm.ratios(runs, "paced") == {}


def test_dlq_tools_options_and_rss_trend() -> None:
    assert dlq_tools.parse(["--only", "list", "--quick"]).only == {"list"}
    with pytest.raises(SystemExit):
        dlq_tools.parse(["--only", "purge"])
    # 10 MiB gained while 100,000 dead letters went by (10 s at 10,000 a second).
    run = {
        "messages": 100_000,
        "elapsed_s": 10.0,
        "samples": [(t / 10, 50.0 + t / 10) for t in range(0, 101)],
    }
    assert dlq_tools.rss_trend_mib_per_100k(run) == pytest.approx(10.0)


async def test_the_startup_pool_prints_its_marker(capsys: pytest.CaptureFixture[str]) -> None:
    pool = startup.make_pool()
    backend = MemoryBackend()
    await pool.start(backend)
    await backend.publish("startup", b'{"n": 1}')
    await backend.join("startup", timeout=5)
    await pool.shutdown()
    await backend.close()
    assert startup.MARKER in capsys.readouterr().out

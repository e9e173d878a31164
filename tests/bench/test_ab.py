"""``python -m bench.ab``: how two versions are named and compared (the runs themselves are benchmarks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.ab import Version, main, parse_version, summary


def _runs(*values: tuple[float, float]) -> list[dict[str, float]]:
    return [
        {"rate": rate, "p50": p50, "p99": 2 * p50, "serving": 1.0, "helpers": 1.0, "load": 1.0, "fakes": 1.0}
        for rate, p50 in values
    ]


def test_pairs_are_won_on_rate_by_the_higher_and_on_latency_by_the_lower() -> None:
    a = Version("a", None, runs=_runs((100, 10), (100, 10), (100, 10)))
    b = Version("b", None, runs=_runs((110, 12), (90, 8), (120, 10)))
    assert summary(a, b, "req/s")[-1] == "b / a (rate): median pair ratio 1.100, b better in 2/3 pairs"
    # Lower p50 wins; a tie is no win.
    assert summary(a, b, "req/s", "p50")[-1] == "b / a (p50): median pair ratio 1.000, b better in 1/3 pairs"
    medians = summary(a, b, "req/s")[2].split()
    assert medians[:4] == ["b", "110", "10.0", "20.0"]


def test_a_version_is_this_checkout_or_one_with_omni_core(tmp_path: Path) -> None:
    here = parse_version("new", ["OMNI_WORKERS=100"])
    assert here.path is None and here.hub_env() == {"OMNI_WORKERS": "100"}
    (tmp_path / "omni_core").mkdir()
    there = parse_version(f"base:{tmp_path}", [])
    python_path = there.hub_env()["PYTHONPATH"].split(":")
    assert python_path[0] == str(tmp_path)
    assert str(tmp_path / "plugins" / "omni-hive") in python_path
    with pytest.raises(SystemExit, match="no omni_core package"):
        parse_version(f"base:{tmp_path / 'missing'}", [])
    with pytest.raises(SystemExit, match="expected NAME=VALUE"):
        parse_version("new", ["OMNI_WORKERS"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ingest", "a", "b", "-r", "0"], "expected more than 0, got 0"),
        (["ingest", "a", "b", "-r", "two"], "expected a whole number, got 'two'"),
        (["ingest", "a", "b", "-s", "0"], "expected more than 0, got 0"),
        (["ingest", "a", "b", "-s", "nan"], "expected more than 0, got nan"),
    ],
)
def test_run_counts_and_durations_must_be_positive(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Rejected before any hub starts (zero pairs used to end in a median of nothing).
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err

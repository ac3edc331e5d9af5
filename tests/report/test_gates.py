import pytest

from shadowtape.errors import InputError
from shadowtape.report.aggregate import load_report
from shadowtape.report.gates import evaluate, parse_gate


def test_rules_parse_with_percentages_and_operators():
    g = parse_gate("drift_rate>1%")
    assert (g.metric, g.op, g.limit) == ("drift_rate", ">", 0.01)
    g = parse_gate(" p99_latency_ratio >= 1.5 ")
    assert (g.metric, g.op, g.limit) == ("p99_latency_ratio", ">=", 1.5)
    assert parse_gate("error_rate>0.5%").limit == pytest.approx(0.005)


@pytest.mark.parametrize(
    "text,message",
    [
        ("drift_rate", "not a rule"),
        ("drift_rate>>1", "not a rule"),
        ("latency>2", "unknown metric"),
        ("status_mismatch>1%", "not a rate"),
    ],
)
def test_bad_rules_say_what_to_write(text, message):
    with pytest.raises(InputError, match=message):
        parse_gate(text)


def test_rules_are_checked_per_route_and_overall(diffed):
    data = load_report(diffed / "_diff")
    results = evaluate(
        [
            parse_gate(t)
            for t in (
                "status_mismatch>0",
                "p99_latency_ratio>1.5",
                "error_rate>50%",
                "failed>1",
                "drift_paths>=2",
            )
        ],
        data,
    )
    status, latency, errors, failed, paths = results
    assert status.tripped and ("GET /reports/{id}", 6.0) in status.where
    assert latency.tripped and "GET /search" in {r for r, _ in latency.where}
    assert errors.tripped and {r for r, _ in errors.where} == {"GET /reports/{id}"}
    assert not failed.tripped and failed.where == ()
    assert {r for r, _ in paths.where} >= {"GET /users/{id}", "GET /catalog", "GET /orders/{uuid}"}
    assert "tripped" in status.describe() and "GET /reports/{id} = 6" in status.describe()

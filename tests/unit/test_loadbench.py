"""`build.py bench`: its arithmetic, its refusals, and what it reports against
the real API service with no engine behind it (every request answered 503).
The stack tier runs it against a serving stack."""

import json

import pytest

from ktappliance.stack.loadbench import Outcome, percentile, summarise
from support.apiservice import running_api
from support.netwait import free_port

from support.buildpy import assert_one_line_error, run_cli


def test_percentiles_are_nearest_rank():
    assert percentile([], 0.5) is None
    assert percentile([3.0], 0.95) == 3.0
    values = [float(n) for n in range(1, 21)]
    assert percentile(values, 0.5) == 10.0 and percentile(values, 0.95) == 19.0


def test_report_per_user_rates_errors_and_429s():
    outcomes = [Outcome(user=0, status=200, first_token_s=0.5, tokens=11, decode_s=1.0, total_s=2.0),
                Outcome(user=0, status=200, first_token_s=1.5, tokens=21, decode_s=4.0, total_s=6.0),
                Outcome(user=1, status=429, error="HTTP 429"),
                Outcome(user=1, status=0, error="ConnectionResetError: reset")]
    report = summarise(outcomes, users=2, interval=1.0, max_tokens=32, wall=10.0)
    assert report.completed == 2 and report.errors == 2 and report.rate_limited == 1
    assert report.per_user_decode_tokens_per_s == {0: pytest.approx(7.5), 1: None}
    assert report.per_user_end_to_end_tokens_per_s == {0: pytest.approx(4.5), 1: None}
    assert report.ttft_p50_s == 0.5 and report.ttft_p95_s == 1.5
    assert report.total_tokens_per_s == pytest.approx(3.2)
    assert report.error_kinds == {"HTTP 429": 1, "ConnectionResetError": 1}
    assert "user 0: decode 7.5 tokens/s, end to end 4.5 tokens/s" in report.to_text()
    assert "user 1: decode - tokens/s, end to end - tokens/s" in report.to_text()
    assert "(of which 429: 1)" in report.to_text()


def test_an_answer_in_one_piece_still_has_an_end_to_end_rate():
    """An engine that sends several tokens per chunk (v0.3.2's balance_serve on
    a fast GPU sent a 96-token answer in one) leaves no decode span to time."""
    outcomes = [Outcome(user=0, status=200, first_token_s=0.9, tokens=96, decode_s=0.0, total_s=0.96)]
    report = summarise(outcomes, users=1, interval=0.0, max_tokens=96, wall=0.96)
    assert report.per_user_decode_tokens_per_s == {0: None}
    assert report.per_user_end_to_end_tokens_per_s == {0: pytest.approx(100.0)}
    assert "came in one piece" in report.to_text()


@pytest.mark.parametrize("args, fragment", [
    (["--users", "0"], "--users 0: must be 1 or more"),
    (["--requests", "0"], "--requests 0: must be 1 or more"),
    (["--interval", "-1"], "--interval -1.0: expected seconds"),
    (["--interval", "nan"], "--interval nan: expected seconds"),
    (["--max-tokens", "0"], "--max-tokens 0: must be 1 or more"),
    (["--url", "ftp://host", "--key", "k"], "--url ftp://host: expected http://HOST:PORT"),
    (["--env-file", "/nonexistent/.env"], "no API key: /nonexistent/.env has no API_KEY"),
])
def test_bad_input_is_one_line(args, fragment):
    assert_one_line_error(run_cli("bench", *args), fragment)


@pytest.fixture(scope="module")
def api_without_engine():
    with running_api({"KTA_UPSTREAM": f"http://127.0.0.1:{free_port()}", "KTA_API_KEYS": "bench-key"}) as (_, url):
        yield url


def test_engine_down_is_counted_not_crashed(api_without_engine, tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("API_KEY=bench-key\n")
    done = run_cli("bench", "--env-file", str(env_file), "--url", api_without_engine, "--users", "2",
                   "--interval", "0", "--requests", "3", "--json")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    report = json.loads(done.stdout)
    assert report["requests"] == 3 and report["completed"] == 0 and report["error_kinds"] == {"HTTP 503": 3}
    assert "3/3 done, 3 failed" in done.stderr

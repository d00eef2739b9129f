"""Cron expressions are checked field by field the way KFP's scheduler reads them (issue 13, item 9).

KFP's API server and ScheduledWorkflow controller parse with robfig/cron v1.2.0 `cron.Parse`
(six fields, seconds first; ranges, steps, lists, JAN-DEC / SUN-SAT names, '?', descriptors).
Before this check only the fields were counted, so 'a b c d e f' and '99 99 99 99 99 99' reached
KFP. Every refusal names the field and the part at fault, and `llmft schedule` exits 2 before
any request.
"""

from __future__ import annotations

import pytest

from pipelines import client as kc
from pipelines.cli import main
from pipelines.kfp_cron import CronError, parse_cron

# (expression, the text the error must contain)
BAD_CRONS = [
    ("a b c d e f", "second field 'a': 'a' is not a value of 0-59"),
    ("99 99 99 99 99 99", "second field '99': 99 is outside 0-59"),
    ("0 60 * * * *", "minute field '60': 60 is outside 0-59"),
    ("0 0 24 * * *", "hour field '24': 24 is outside 0-23"),
    ("0 0 0 0 * *", "day-of-month field '0': 0 is outside 1-31"),
    ("0 0 0 32 * *", "day-of-month field '32': 32 is outside 1-31"),
    ("0 0 0 * 13 *", "month field '13': 13 is outside 1-12 or JAN-DEC"),
    ("0 0 0 * 0 *", "month field '0': 0 is outside 1-12"),
    ("0 0 0 * * 7", "day-of-week field '7': 7 is outside 0-6 or SUN-SAT, Sunday = 0"),
    ("0 0 0 * foo *", "month field 'foo': 'foo' is not a value of 1-12 or JAN-DEC"),
    ("0 0 0 * * sunday", "day-of-week field 'sunday': 'sunday' is not a value"),
    ("0 0 0 * * MON-FOO", "day-of-week field 'MON-FOO': 'FOO' is not a value"),
    ("0 0 0 L * *", "day-of-month field 'L': 'L' is not a value of 1-31 (robfig/cron has no L, W or #)"),
    ("0 0 0 15W * *", "(robfig/cron has no L, W or #)"),
    ("0 0 0 * * 5#3", "day-of-week field '5#3'"),
    ("0 5-2 * * * *", "minute field '5-2': the range 5-2 runs backwards"),
    ("0 0 0 * DEC-JAN *", "the range DEC-JAN runs backwards"),
    ("0 */0 * * * *", "minute field '*/0': a step must be 1 or more"),
    ("0 */x * * * *", "minute field '*/x': the step 'x' is not a whole number"),
    ("0 */-5 * * * *", "the step '-5' is not a whole number"),
    ("0 1/2/3 * * * *", "minute field '1/2/3': '1/2/3' has more than one '/'"),
    ("0 1-2-3 * * * *", "minute field '1-2-3': '1-2-3' has more than one '-'"),
    ("0 *-5 * * * *", "minute field '*-5': '*' and '?' stand alone"),
    ("0 -5 * * * *", "minute field '-5': '-5' has no start: negative numbers are not values"),
    ("0 +5 * * * *", "minute field '+5': '+5' is not a value of 0-59"),
    ("0 \u0663 * * * *", "is not a value of 0-59"),  # an Arabic-Indic digit: int() takes it, Go does not
    ("0 5- * * * *", "minute field '5-': a value is missing"),
    ("0 /5 * * * *", "minute field '/5': a value is missing"),
    ("0 , * * * *", "minute field ',': an empty item in the list"),
    ("0 1,,2 * * * *", "minute field '1,,2': an empty item in the list"),
    ("0 1, * * * *", "minute field '1,': an empty item in the list"),
    ("0 0 0 31 2 *", "never fires: day-of-month field '31' names no day that month field '2' has"),
    ("0 0 0 30 FEB ?", "never fires"),
    ("0 0 0 31 4,6,9,11 *", "never fires"),
    ("0 2 * * *", "has 5 fields; KFP needs 6 (seconds first), e.g. '0 0 2 * * *'"),
    ("0 0 0 2 * * *", "has 7 fields; KFP needs 6"),
    ("", "has 0 fields"),
    ("   ", "has 0 fields"),
    ("@sometimes", "unknown descriptor"),
    ("@Daily", "unknown descriptor; use one of @annually, @daily"),
    ("@reboot", "unknown descriptor"),
    ("@every", "@every needs a duration such as 6h, 90m or 1h30m"),
    ("@every 1 hour", "is not a duration such as 6h"),
    ("@every 1h 30m", "@every '1h 30m' is not a duration"),
    ("@every 6", "@every '6' is not a duration"),
    ("@every -1h", "without a sign"),
    ("@every 0", "@every 0 is shorter than a second; KFP's scheduler would run it every second"),
    ("@every 500ms", "@every 500ms is shorter than a second"),
    ("@every 1.5s", "@every 1.5s has a fraction of a second"),
    ("@every 99999999h", "longer than Go's durations"),
]

GOOD_CRONS = [
    ("0 0 2 * * *", "0 0 2 * * *"),
    (" 0  30 1 * * 1-5 ", "0 30 1 * * 1-5"),
    ("0\t0\t2 * * *", "0 0 2 * * *"),
    ("0 */15 * * * *", "0 */15 * * * *"),
    ("0 5/15 * * * *", "0 5/15 * * * *"),
    ("0 0 12 ? JAN-mar sun,SAT", "0 0 12 ? JAN-mar sun,SAT"),
    ("0 0 9-17/2 * * MON-FRI", "0 0 9-17/2 * * MON-FRI"),
    ("0 0 0 1,15 * *", "0 0 0 1,15 * *"),
    ("0 0 0 29 2 *", "0 0 0 29 2 *"),  # leap days come within robfig/cron's five-year look-ahead
    ("0 0 0 31 2 MON", "0 0 0 31 2 MON"),  # both day fields restricted: either matches (Mondays)
    ("0 0 0 31 4,7 *", "0 0 0 31 4,7 *"),
    ("0 0 0 ? * 0", "0 0 0 ? * 0"),
    ("@daily", "@daily"),
    ("@midnight", "@midnight"),
    ("@annually", "@annually"),
    ("@every 6h", "@every 6h"),
    ("@every 1h30m", "@every 1h30m"),
    ("@every 1.5h", "@every 1.5h"),
    ("@every  90s", "@every 90s"),
]


@pytest.mark.parametrize(("cron", "fragment"), BAD_CRONS, ids=[repr(c) for c, _ in BAD_CRONS])
def test_bad_cron_is_refused_naming_field_and_value(cron: str, fragment: str) -> None:
    with pytest.raises(CronError) as error:
        parse_cron(cron)
    message = str(error.value)
    assert message.startswith(f"cron {cron!r}"), message
    assert fragment in message, message
    # The client's check is the same one, as the error type `llmft schedule` turns into exit 2.
    with pytest.raises(kc.ClientInputError) as client_error:
        kc.validate_cron(cron)
    assert str(client_error.value) == message


@pytest.mark.parametrize(("cron", "normalised"), GOOD_CRONS, ids=[repr(c) for c, _ in GOOD_CRONS])
def test_cron_kfp_reads_is_accepted(cron: str, normalised: str) -> None:
    assert parse_cron(cron) == normalised
    assert kc.validate_cron(cron) == normalised


def test_sub_minute_schedules_are_accepted_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    assert parse_cron("*/30 * * * * *") == "*/30 * * * * *"
    assert parse_cron("@every 30s") == "@every 30s"
    assert caplog.text.count("fires more than once a minute") == 2


@pytest.mark.parametrize("cron", ["a b c d e f", "99 99 99 99 99 99", "0 0 0 31 2 *", "@every 0"])
def test_llmft_schedule_exits_2_before_any_request(cron: str, capsys: pytest.CaptureFixture[str]) -> None:
    # Port 9 (discard) on loopback: any request would fail with another exit code, not 2.
    argv = ["schedule", "--host", "http://127.0.0.1:9", "--name", "nightly", "--cron", cron]
    assert main(argv) == kc.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"error: cron {cron!r}") and err.count("\n") == 1
    assert "Traceback" not in err

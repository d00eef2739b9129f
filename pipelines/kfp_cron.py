"""The cron dialect of KFP's scheduler, checked field by field before anything is sent to KFP.

KFP's API server (when a recurring run is created) and its ScheduledWorkflow controller (when
the next run is due) both parse the schedule with `cron.Parse` of github.com/robfig/cron v1.2.0
(pinned in KFP's go.mod). That parser reads:

- six fields, `second minute hour day-of-month month day-of-week`; a fifth-only form is read
  as `second minute hour day month` (so '0 2 * * *' would run hourly at :02), which llmft
  refuses: schedules here always have six fields;
- in each field a comma-separated list of `*`, `?` (the same as `*`), `N` or `N-M`, each
  optionally followed by `/step`; `N/step` means `N-max/step`;
- names for months (JAN-DEC) and days of the week (SUN-SAT), in any case; days of the week
  are 0-6 with Sunday 0 (7 is refused), there is no `L`, `W` or `#`;
- descriptors, exactly as written: @yearly, @annually, @monthly, @weekly, @daily, @midnight,
  @hourly and `@every <Go duration>` such as @every 6h or @every 1h30m.

Where robfig/cron would accept something that does not mean what it seems, llmft refuses it too,
with the reason: empty list items (',,' is dropped, and a field of only commas matches nothing),
'*-5' (read as '*'), an `@every` under a second or with a fraction of one (rounded silently), and
a day of month that no selected month has ('0 0 0 31 2 *' never fires).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

log = logging.getLogger(__name__)


class CronError(ValueError):
    """A cron expression KFP's scheduler would refuse, or read differently from how it looks."""


DESCRIPTORS = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"})
EVERY = "@every"

_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# Days each month can have; February counts its leap day (robfig/cron looks five years ahead).
_MONTH_DAYS = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}
_NUMBER = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class CronField:
    """One position of the six: its name, its bounds and the names it accepts."""

    name: str
    low: int
    high: int
    names: dict[str, int] = field(default_factory=dict)

    def describe_range(self) -> str:
        names = {"month": " or JAN-DEC", "day-of-week": " or SUN-SAT, Sunday = 0"}.get(self.name, "")
        return f"{self.low}-{self.high}{names}"


FIELDS: tuple[CronField, ...] = (
    CronField("second", 0, 59),
    CronField("minute", 0, 59),
    CronField("hour", 0, 23),
    CronField("day-of-month", 1, 31),
    CronField("month", 1, 12, {name: number for number, name in enumerate(_MONTH_NAMES, start=1)}),
    CronField("day-of-week", 0, 6, {name: number for number, name in enumerate(_DAY_NAMES)}),
)

# Go's time.ParseDuration units, in nanoseconds.
_DURATION_UNITS = {
    "ns": 1,
    "us": 10**3,
    "µs": 10**3,  # U+00B5 micro sign
    "μs": 10**3,  # U+03BC Greek mu
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_MAX_DURATION_NS = 2**63 - 1  # Go's time.Duration is an int64 of nanoseconds
_SECOND_NS = 10**9


@dataclass(frozen=True)
class _FieldValues:
    values: frozenset[int]
    star: bool  # a '*' or '?' item: robfig/cron then ANDs day-of-month with day-of-week


def parse_cron(expression: str) -> str:
    """`expression` with its whitespace normalised (what is sent to KFP), or raise `CronError`.

    Every field's syntax and values are checked the way robfig/cron v1.2.0 reads them (see the
    module docstring), and the message names the field and the part at fault.
    """
    text = " ".join(expression.split())
    if text.startswith("@"):
        _check_descriptor(expression, text)
        return text
    fields = text.split(" ") if text else []
    if len(fields) != len(FIELDS):
        example = "0 0 2 * * *"
        if len(fields) == len(FIELDS) - 1:
            example = "0 " + text
        raise CronError(
            f"cron {expression!r} has {len(fields)} fields; KFP needs 6 (seconds first), e.g. {example!r}"
        )
    parsed = [_parse_field(expression, spec, part) for spec, part in zip(FIELDS, fields, strict=True)]
    _check_day_exists(expression, fields, parsed)
    if fields[0] == "*" or fields[0].startswith("*/"):
        log.warning("cron %r fires more than once a minute (seconds field %r)", text, fields[0])
    return text


def _check_descriptor(expression: str, text: str) -> None:
    if text in DESCRIPTORS:
        return
    if text == EVERY or text.startswith(EVERY + " "):
        duration = text[len(EVERY) :].strip()
        nanoseconds = _go_duration_ns(expression, duration)
        if nanoseconds < _SECOND_NS:
            raise CronError(
                f"cron {expression!r}: @every {duration} is shorter than a second; KFP's scheduler "
                "would run it every second"
            )
        if nanoseconds % _SECOND_NS:
            raise CronError(
                f"cron {expression!r}: @every {duration} has a fraction of a second, which KFP's "
                "scheduler drops; give whole seconds"
            )
        if nanoseconds < 60 * _SECOND_NS:
            log.warning("cron %r fires more than once a minute", text)
        return
    raise CronError(
        f"cron {expression!r}: unknown descriptor; use one of {', '.join(sorted(DESCRIPTORS))} "
        "or '@every 6h' (descriptors are lowercase)"
    )


def _go_duration_ns(expression: str, duration: str) -> int:
    """Nanoseconds in a Go duration ("1h30m", "90s", "1.5h"), as time.ParseDuration reads it."""
    hint = "a duration such as 6h, 90m or 1h30m (units h, m, s, ms, us, ns)"
    if not duration:
        raise CronError(f"cron {expression!r}: @every needs {hint}")
    if duration[0] in "+-":
        raise CronError(f"cron {expression!r}: @every {duration}: give {hint}, without a sign")
    if duration == "0":
        return 0
    total = Fraction(0)
    position = 0
    while position < len(duration):
        match = _DURATION_PART.match(duration, position)
        if match is None:
            raise CronError(f"cron {expression!r}: @every {duration!r} is not {hint}")
        total += Fraction(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if total > _MAX_DURATION_NS:
        raise CronError(f"cron {expression!r}: @every {duration} is longer than Go's durations (292 years)")
    return int(total)


def _parse_field(expression: str, spec: CronField, text: str) -> _FieldValues:
    def fail(problem: str) -> CronError:
        return CronError(f"cron {expression!r}: {spec.name} field {text!r}: {problem}")

    values: set[int] = set()
    star = False
    for item in text.split(","):
        if not item:
            # robfig/cron drops empty items; a field of only commas would match nothing at all.
            raise fail("an empty item in the list (',,' or a ',' at either end)")
        range_text, slash, step_text = item.partition("/")
        if "/" in step_text:
            raise fail(f"{item!r} has more than one '/'")
        if range_text in ("*", "?"):
            low, high = spec.low, spec.high
            star = True
        elif range_text.startswith(("*", "?")):
            raise fail("'*' and '?' stand alone: robfig/cron would read this item as '*'")
        else:
            low_text, dash, high_text = range_text.partition("-")
            if dash and not low_text:
                raise fail(f"{item!r} has no start: negative numbers are not values")
            if "-" in high_text:
                raise fail(f"{item!r} has more than one '-'")
            low = _parse_value(spec, low_text, fail)
            high = _parse_value(spec, high_text, fail) if dash else low
            if slash and not dash:
                high = spec.high  # robfig/cron: "N/step" is "N-max/step"
            if low > high:
                raise fail(f"the range {range_text} runs backwards")
        step = 1
        if slash:
            if not _NUMBER.fullmatch(step_text):
                raise fail(f"the step {step_text!r} is not a whole number")
            step = int(step_text)
            if step < 1:
                raise fail("a step must be 1 or more")
        values.update(range(low, high + 1, step))
    return _FieldValues(frozenset(values), star)


def _parse_value(spec: CronField, text: str, fail: Callable[[str], CronError]) -> int:
    if not text:
        raise fail(f"a value is missing; {spec.name} takes {spec.describe_range()}")
    if text.lower() in spec.names:
        return spec.names[text.lower()]
    if not _NUMBER.fullmatch(text):
        extra = " (robfig/cron has no L, W or #)" if any(c in text.upper() for c in "LW#") else ""
        raise fail(f"{text!r} is not a value of {spec.describe_range()}{extra}")
    value = int(text)
    if value < spec.low or value > spec.high:
        raise fail(f"{value} is outside {spec.describe_range()}")
    return value


def _check_day_exists(expression: str, fields: list[str], parsed: list[_FieldValues]) -> None:
    """Refuse a schedule that never fires: robfig/cron then waits forever without an error.

    With a '*' in either day field the two day fields must both match (robfig/cron ANDs them); with
    day-of-week unrestricted, some selected day of month must exist in some selected month.
    """
    days, months, weekdays = parsed[3], parsed[4], parsed[5]
    if days.star or not weekdays.star:
        return
    if any(day <= _MONTH_DAYS[month] for month in months.values for day in days.values):
        return
    raise CronError(
        f"cron {expression!r} never fires: day-of-month field {fields[3]!r} names no day that month "
        f"field {fields[4]!r} has"
    )

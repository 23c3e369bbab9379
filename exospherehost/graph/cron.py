"""Cron expressions: parse, validate and compute fire times (pure; the scheduler that fires
them is exospherehost.runtime.cron)."""

from __future__ import annotations

from datetime import UTC, datetime

from croniter import croniter

from exospherehost.errors import CronExpressionError as CronExpressionError  # old import path


def next_fire(expression: str, after: int) -> int:
    """The first fire time of `expression` strictly after `after` (epoch seconds, UTC)."""
    it = croniter(expression, datetime.fromtimestamp(after, UTC), second_at_beginning=True)
    return int(it.get_next(float))


def check_expression(expression: str) -> str:
    """Validate a cron expression (5 fields, or 6 with seconds first); raises
    CronExpressionError naming it."""
    fields = expression.split()
    if not expression.startswith("@") and len(fields) not in (5, 6):
        raise CronExpressionError(
            f"cron expression {expression!r} has {len(fields)} fields: use 5 "
            f"('minute hour day-of-month month day-of-week') or 6 with seconds first "
            f"('second minute hour day-of-month month day-of-week')"
        )
    try:
        next_fire(expression, 0)
    except Exception as exc:  # croniter raises several types (and KeyError on some input)
        raise CronExpressionError(f"cron expression {expression!r} is invalid: {exc}") from None
    return expression

"""Graph templates: compile, validate, template expressions, retry policy, cron expressions and
run plans. Pure: nothing here does I/O (tests/unit/test_layering.py pins it)."""

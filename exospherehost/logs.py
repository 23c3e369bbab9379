"""Logging of the SDK. Every module logs to a child of the ``exospherehost`` logger and
nothing is configured on import: an application's own logging setup always wins.

A Runtime calls :func:`setup_logging` when it starts, honouring the original SDK's
environment variables:

- ``EXOSPHERE_LOG_LEVEL`` (``DEBUG``, ``INFO``, ``WARNING``, ``ERROR``, or a number) sets
  the level of the ``exospherehost`` logger.
- ``EXOSPHERE_DISABLE_DEFAULT_LOGGING``: unless it is set, a worker started without any
  logging configuration still prints its messages. A default stderr handler is added to
  the ``exospherehost`` logger, but only when neither the root logger nor that logger
  has a handler, so a configured application is never given duplicate lines.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

LOGGER_NAME = "exospherehost"
ENV_LEVEL = "EXOSPHERE_LOG_LEVEL"
ENV_DISABLE = "EXOSPHERE_DISABLE_DEFAULT_LOGGING"
DEFAULT_FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"
_FALSE = frozenset({"", "0", "false", "no", "off"})


def parse_level(text: str) -> int | None:
    """A level name (any case; ``WARN`` too) or number, or None if it is neither."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    return logging.getLevelNamesMapping().get(text.upper())


def setup_logging(environ: Mapping[str, str] | None = None) -> logging.Handler | None:
    """Apply ``EXOSPHERE_LOG_LEVEL`` and, if nothing else is configured, add the default
    handler; returns the handler added, if any. Calling it again adds nothing more."""
    env = os.environ if environ is None else environ
    logger = logging.getLogger(LOGGER_NAME)
    raw_level = env.get(ENV_LEVEL, "").strip()
    level = parse_level(raw_level) if raw_level else None
    if level is not None:
        logger.setLevel(level)
    handler: logging.Handler | None = None
    # "false"/"0" read as "not set": someone writing DISABLE=false does not mean disable.
    disabled = env.get(ENV_DISABLE, "").strip().lower() not in _FALSE
    if not disabled and not logging.getLogger().handlers and not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(DEFAULT_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
        logger.addHandler(handler)
        if logger.level == logging.NOTSET:
            # The root logger's WARNING would hide "runtime serving ..." and the like; the
            # original SDK's default level is INFO.
            logger.setLevel(logging.INFO)
    if raw_level and level is None:
        logger.warning(
            "%s=%r is not a log level (use DEBUG, INFO, WARNING, ERROR or a number); ignored",
            ENV_LEVEL,
            raw_level,
        )
    return handler

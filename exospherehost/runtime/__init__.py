"""The worker side: a Runtime process, its pipeline (read, execute, settle), upkeep loops,
settle planning, statistics, metrics and the cron scheduler."""

from exospherehost.runtime.process import Runtime

__all__ = ["Runtime"]

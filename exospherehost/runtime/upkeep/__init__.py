"""A worker's upkeep, beside its hot pipeline (exospherehost.runtime.worker): promoting due
retries, reclaiming states of dead or hung workers (and pruning dead consumers), keeping
claims alive, leaving the groups at a clean stop. Each loop gets what it needs explicitly:
the broker, the worker's Retrier and its Holdings. They log as the worker
("exospherehost.runtime.worker"): for whoever filters logs by name, they are part of it."""

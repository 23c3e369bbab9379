"""Field names of the hashes and stream entries the SDK and the Lua scripts share, defined
once (README "Wire protocol"). The scripts spell them as literals (a script cannot import):
tests/unit/test_fields.py reads broker/lua/*.lua and fails on any run-hash, group-hash,
event or envelope field literal that is not defined here, or spelled differently."""

from __future__ import annotations

from typing import Final

# -- stream entries ---------------------------------------------------------------------
ENVELOPE_FIELD: Final = "_exo"
"""Stream-entry field holding a msgpack envelope. Any other fields are plain inputs."""

# -- the run hash (Keys.run) --------------------------------------------------------------
RUN_GRAPH: Final = "graph"
RUN_VERSION: Final = "version"  # the graph version the run pinned
RUN_STATUS: Final = "status"  # one of RUN_STATUSES
RUN_OPEN: Final = "open"  # states of the run not yet settled
RUN_FAILED: Final = "failed"  # states that finally failed (the run ends FAILED if > 0)
RUN_CREATED_MS: Final = "created_ms"
RUN_FINISHED_MS: Final = "finished_ms"  # set when the last open state settles
RUN_TRIGGER: Final = "trigger"  # "cron" for a scheduled run (absent for a manual one)
RUN_CRON: Final = "cron"  # the cron expression that fired it
RUN_FIRE_TS: Final = "fire_ts"  # the fire time (epoch seconds) it was fired for
RUN_FIELDS: Final = frozenset(
    {
        RUN_GRAPH,
        RUN_VERSION,
        RUN_STATUS,
        RUN_OPEN,
        RUN_FAILED,
        RUN_CREATED_MS,
        RUN_FINISHED_MS,
        RUN_TRIGGER,
        RUN_CRON,
        RUN_FIRE_TS,
    }
)

RUNNING: Final = "RUNNING"
SUCCEEDED: Final = "SUCCEEDED"
FAILED: Final = "FAILED"
CANCELLED: Final = "CANCELLED"
RUN_STATUSES: Final = frozenset({RUNNING, SUCCEEDED, FAILED, CANCELLED})
CANCELLED_OPEN: Final = -(2**50)
"""What cancel_run.lua adds to a cancelled run's `open` count: settle.lua takes a count
below half of it for a cancelled run (and emits nothing for its states)."""

# Per-identifier fields of the run hash are `<prefix><identifier>`.
CREATED: Final = "c:"  # states created (counter)
SUCCEEDED_COUNT: Final = "s:"
FAILED_COUNT: Final = "f:"
PRUNED_COUNT: Final = "p:"
RETRIED_COUNT: Final = "r:"
SKIPPED_COUNT: Final = "k:"  # a uniting node's groups that did not fire
WHY: Final = "why:"  # text: why a unite did not fire
RUN_PREFIXES: Final = frozenset(
    {CREATED, SUCCEEDED_COUNT, FAILED_COUNT, PRUNED_COUNT, RETRIED_COUNT, SKIPPED_COUNT, WHY}
)


def per_identifier(prefix: str, identifier: str) -> str:
    """The run-hash field of `identifier` for one of RUN_PREFIXES."""
    return prefix + identifier


# -- a fan-in group hash (Keys.group): written and read by settle.lua only ----------------
GROUP_OPEN: Final = "open"
GROUP_BAD: Final = "bad"
GROUP_STRATEGY: Final = "strategy"
GROUP_ENV: Final = "env"
GROUP_UNITE: Final = "unite"
GROUP_FIRED: Final = "fired"
GROUP_FIELDS: Final = frozenset(
    {GROUP_OPEN, GROUP_BAD, GROUP_STRATEGY, GROUP_ENV, GROUP_UNITE, GROUP_FIRED}
)

# -- a run's per-state records (Keys.run_states): field `<state id>` is a record; these
# prefixes make the other fields `<prefix><state id>` ------------------------------------
STATE_PARENT: Final = "^"  # -> msgpack [parent state id, created ms]
STATE_RETRIED_AS: Final = ">"  # -> the state retry_state made of it
STATE_RETRY_OF: Final = "<"  # -> the state it is a retry of
STATE_PREFIXES: Final = frozenset({STATE_PARENT, STATE_RETRIED_AS, STATE_RETRY_OF})

# -- an entry of the events stream (Keys.events) ------------------------------------------
EVENT_RUN: Final = "run"
EVENT_STATUS: Final = "status"
EVENT_FIELDS: Final = frozenset({EVENT_RUN, EVENT_STATUS})

# -- an entry of a node's output stream (Keys.output) -------------------------------------
OUT_STATE: Final = "state"
OUT_STATUS: Final = "status"
OUT_OUTPUTS: Final = "outputs"  # msgpack outputs of a success
OUT_DATA: Final = "data"  # msgpack data of a prune
OUT_ERROR: Final = "error"

# -- an entry of the dead-letter stream (Keys.dead) ---------------------------------------
DEAD_NODE: Final = "node"
DEAD_STATE: Final = "state"
DEAD_RUN: Final = "run"
DEAD_IDENTIFIER: Final = "identifier"
DEAD_ATTEMPTS: Final = "attempts"
DEAD_DELIVERIES: Final = "deliveries"
DEAD_ERROR: Final = "error"
DEAD_TRACEBACK: Final = "traceback"
DEAD_TIME_MS: Final = "time_ms"
DEAD_ENTRY: Final = "entry"
DEAD_ORIGINAL: Final = "original"  # msgpack of the original entry's fields

# -- a record of a run's history list (Keys.run_history), msgpack map keys -----------------
HIST_STATE: Final = "state"
HIST_IDENTIFIER: Final = "identifier"
HIST_NODE: Final = "node"
HIST_STATUS: Final = "status"
HIST_ATTEMPT: Final = "attempt"
HIST_ERROR: Final = "error"
HIST_TIME_MS: Final = "time_ms"

# -- a record of a run's results list (Keys.run_results), msgpack map keys -----------------
RESULT_IDENTIFIER: Final = "identifier"
RESULT_STATE: Final = "state"
RESULT_OUTPUTS: Final = "outputs"

# -- a settled state's status (output stream entries and history records) ------------------
PRUNED: Final = "PRUNED"

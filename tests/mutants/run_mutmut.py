"""mutmut (generated Python mutants) over core modules, in a scratch copy of the repo.

    python tests/mutants/run_mutmut.py [MODULE ...] [--only PATTERN ...] [--tests TEST ...]
                                       [--max-children N] [--keep]

MODULE is a path such as exospherehost/graph/retry.py; the default is every core module
below. The test selection is the union of the fast tests of the chosen modules (mutmut
then runs, per mutant, only the selected tests that reach the mutated function). The
configuration is written into the scratch copy (its setup.cfg), so the repository's own
pyproject.toml carries none and `mutants/` never lands in the work tree. Prints mutmut's
survivors. --only runs the mutants whose names match a pattern (mutmut's fnmatch, e.g.
'exospherehost.runtime.worker.x*_reclaim*'): a part of a slow module; --tests replaces
the selection (for a part the whole selection would take ~95 s per survivor to run).
With --keep the scratch copy stays for `mutmut show NAME` / `mutmut browse`
there. Slow (minutes per module): not part of CI; run it with `./dev mutate py ...`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_mutants import ROOT, scratch_copy

# module -> the fast tests that exercise it (unit tests, and integration tests that run a
# Runtime in-process on the session's private redis-server).
# The worker's selection (about 95 s per surviving mutant).
WORKER_TESTS: list[str] = [
    "tests/unit/test_settler.py",
    "tests/unit/test_mutants_worker_unit.py",
    "tests/unit/test_mutants_worker_life_unit.py",
    "tests/unit/test_mutants_upkeep_unit.py",
    "tests/unit/test_script_planning.py",
    "tests/unit/test_jobqueue.py",
    "tests/unit/test_reclaim_rules.py",
    *(
        f"tests/integration/test_reclaim.py::{t}"
        for t in (
            "test_many_orphaned_states_clear_in_bounded_time_within_the_room",
            "test_a_saturated_worker_still_reclaims",
            "test_claim_script_takes_one_suspect_the_poisoned_and_the_rest_up_to_count",
            "test_a_hung_suspect_does_not_block_the_next_suspects",
            "test_a_poison_reclaimed_with_innocents_is_dead_lettered_alone",
            "test_dead_consumers_are_removed_live_and_holding_ones_kept",
            "test_deliveries_carried_across_releases_count_toward_the_poison_limit",
        )
    ),
    "tests/integration/test_promises_claims.py",
    "tests/integration/test_bad_nodes.py",
    "tests/integration/test_script_failures.py",
    "tests/integration/test_mutants_worker.py",
    "tests/integration/test_mutants_worker_life.py",
    # _execute's graph paths (~4 s): a node reading its secrets, a fired unite's collected
    # inputs, and a uniting node whose inputs cannot be rendered.
    "tests/integration/test_secrets.py::test_secrets_never_appear_in_plaintext_anywhere",
    *(
        f"tests/integration/test_promises_runs.py::{t}"
        for t in (
            "test_a_fired_unite_reopens_the_run_until_the_uniting_state_settles",
            "test_a_unite_with_every_branch_pruned_and_unrenderable_inputs_fails_without_retries",
        )
    ),
]


CORE: dict[str, list[str]] = {
    "exospherehost/graph/retry.py": [
        "tests/unit/test_retry.py",
        "tests/unit/test_promises_unit.py",
        "tests/unit/test_settle_plan.py",
    ],
    "broker/keys.py": ["tests/unit", "tests/integration/test_promises_wire.py"],
    "broker/codec.py": [
        "tests/unit/test_codec.py",
        "tests/unit/test_mutants_codec.py",
        "tests/unit/test_settle_plan.py",
        "tests/integration/test_promises_wire.py",
        "tests/integration/test_settle.py",
    ],
    "exospherehost/client/deadletters.py": [
        "tests/integration/test_promises_deadletters.py",
        "tests/integration/test_failures.py",
    ],
    # Pure planning: its unit tests and plans settled directly on Redis (milliseconds
    # each); of the Runtime tests (about 1 s each) only the two nested fan-ins, the one
    # case those do not reach. All of test_promises_runs + test_graphs cost about 20 s
    # per surviving mutant: an hour for the module, too slow to run.
    "exospherehost/runtime/settle.py": [
        "tests/unit/test_settle_plan.py",
        "tests/unit/test_script_planning.py",
        "tests/unit/test_settler.py",
        "tests/integration/test_mutants_settle.py",
        "tests/integration/test_settle.py",
        "tests/integration/test_promises_runs.py::"
        "test_nested_fan_in_fires_the_outer_unite_after_every_inner_one",
        "tests/integration/test_promises_runs.py::"
        "test_nested_fan_in_when_inner_groups_close_with_a_pruned_branch",
    ],
    # Unit tests only: execute() needs no Redis, and with test_core / test_promises_runs
    # (a Runtime each) every execute() mutant took ~30 s (324 mutants: over an hour).
    "exospherehost/runtime/execution.py": ["tests/unit"],
    # Every Runtime test reaches the worker's loops, so a surviving mutant costs the whole
    # selection: the worker's unit tests and the Runtime tests of claims, reclaiming, bad
    # nodes, failing scripts and worker survivors (~95 s), not test_core / test_failures /
    # test_promises_stats (~47 s per mutant more), nor test_reclaim's two slowest (17 s and
    # 7 s; the same paths as its others and test_promises_claims' heartbeat test).
    "exospherehost/runtime/worker.py": WORKER_TESTS,
    # Pure (no I/O, no clock): its unit tests and the reader's stub-broker tests.
    "exospherehost/runtime/prefetch.py": [
        "tests/unit/test_prefetch.py",
        "tests/unit/test_mutants_prefetch.py",
        "tests/unit/test_mutants_worker_unit.py",
    ],
    # The cancelled-runs watch, the dashboards' reporter and the lanes (issues 12, 13, 14):
    # their Runtime tests and stub-broker unit tests.
    "exospherehost/runtime/upkeep/cancelled.py": [
        "tests/integration/test_cancel.py",
        "tests/unit/test_mutants_upkeep_unit.py",
    ],
    "exospherehost/runtime/upkeep/report.py": [
        "tests/integration/test_worker_records.py",
        "tests/unit/test_mutants_upkeep_unit.py",
    ],
    "exospherehost/runtime/lanes.py": [
        "tests/integration/test_lanes.py",
        "tests/unit/test_mutants_lanes_unit.py",
    ],
    # The upkeep loops were split out of worker.py after its mutmut run: the same tests.
    **{
        f"exospherehost/runtime/upkeep/{m}.py": WORKER_TESTS
        for m in ("reclaim", "heartbeat", "promote", "prune", "retire", "rules", "holdings")
    },
}


SOURCES = {"exospherehost", "broker"}


def setup_cfg(modules: list[str], scratch: Path, tests: list[str] | None = None) -> str:
    if not tests:
        tests = sorted({t for m in modules for t in CORE.get(m, ["tests/unit"])})

    def block(values: list[str]) -> str:
        return "".join(f"\n    {v}" for v in values)

    return (
        "[mutmut]\n"
        f"source_paths={block(sorted(SOURCES))}\n"
        f"only_mutate={block(modules)}\n"
        # Everything else the tests read (examples, docker-compose.yml, README, ...).
        f"also_copy={block(sorted(p.name for p in scratch.iterdir() if p.name not in SOURCES))}\n"
        f"pytest_add_cli_args_test_selection={block(tests)}\n"
        # Logging calls and docstrings are not behaviour worth a mutant each.
        f"do_not_mutate_patterns={block(['log.*', 'logging.*'])}\n"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("modules", nargs="*", default=list(CORE))
    ap.add_argument("--max-children", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the scratch copy")
    ap.add_argument("--only", nargs="+", default=[], metavar="PATTERN", help="mutant names")
    ap.add_argument(
        "--tests",
        nargs="+",
        default=[],
        metavar="TEST",
        help="the test selection instead of the modules' (CORE): a faster one for a part",
    )
    args = ap.parse_args()
    unknown = [m for m in args.modules if not (ROOT / m).is_file()]
    if unknown:
        raise SystemExit(f"no such module: {unknown}")
    mutmut = str(ROOT / ".venv/bin/mutmut")
    if not Path(mutmut).exists():
        raise SystemExit("mutmut is not installed: ./dev mutate installs the `mutate` extra")
    scratch = scratch_copy()
    (scratch / "setup.cfg").write_text(setup_cfg(args.modules, scratch, args.tests))
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    try:
        # Own process group, so an interrupted run leaves no pytest or redis-server behind.
        run = subprocess.Popen(
            [mutmut, "run", "--max-children", str(args.max_children), *args.only],
            cwd=scratch,
            env=env,
            start_new_session=True,
        )
        try:
            run.wait()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.pid, signal.SIGKILL)
        print("\nSurvivors (mutmut results):", flush=True)
        results = subprocess.run(
            [mutmut, "results"], cwd=scratch, env=env, capture_output=True, text=True
        )
        print(results.stdout.strip() or "  none")
        survivors = [ln for ln in results.stdout.splitlines() if ln.strip()]
    finally:
        if args.keep:
            print(f"\nscratch copy kept: cd {scratch} && {mutmut} show NAME")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return 1 if survivors or run.returncode else 0


if __name__ == "__main__":
    sys.exit(main())

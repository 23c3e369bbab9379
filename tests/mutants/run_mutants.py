"""Apply hand-written one-line mutants to a scratch copy of the repository, one at a time,
and run the tests that should catch each; print the survivors.

    python tests/mutants/run_mutants.py [LIST ...] [-k ID,...] [--timeout S] [--show]

LIST defaults to tests/mutants/lua_mutants.txt. Each non-blank, non-# line of a list is

    id || path || original line || replacement line || pytest arguments

`original` must match exactly one line of `path` (compared without surrounding
whitespace), or `path#N` names the Nth of several matching lines; the replacement takes
that line's indentation. A mutant is KILLED when
pytest fails, SURVIVED when it passes (the tests do not notice the bug), ERROR when the
line is not found or pytest could not run the selection (exit 4/5). Exit status: 1 if
any survived or errored. The scratch copy holds the work tree's files (tracked and
untracked, not ignored), so uncommitted tests count; it runs on this repo's .venv.
Slow by design (a test run per mutant): not part of CI, run it with `./dev mutate lua`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEP = " || "


@dataclass(frozen=True)
class Mutant:
    id: str
    path: str
    original: str
    replacement: str
    tests: list[str]
    source: str  # list file and line, for messages


def parse(list_file: Path) -> list[Mutant]:
    mutants = []
    for n, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split(SEP)
        if len(parts) != 5:
            raise SystemExit(f"{list_file}:{n}: expected 5 fields separated by {SEP!r}")
        ident, path, original, replacement, tests = (p.strip() for p in parts)
        mutants.append(
            Mutant(ident, path, original, replacement, shlex.split(tests), f"{list_file.name}:{n}")
        )
    return mutants


def scratch_copy() -> Path:
    """The work tree's files (tracked + untracked, not ignored) in a temp dir."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    dest = Path(tempfile.mkdtemp(prefix="exo-mutants-"))
    for raw in files:
        if not raw:
            continue
        rel = raw.decode()
        src = ROOT / rel
        if src.is_symlink():  # exospherehost/broker -> ../broker stays a link
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).symlink_to(os.readlink(src))
        elif src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def target_path(m: Mutant) -> str:
    return m.path.partition("#")[0]


def mutate(text: str, m: Mutant) -> str | None:
    lines = text.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if line.strip() == m.original]
    _, _, nth = m.path.partition("#")
    if nth:
        if not nth.isdigit() or not 1 <= int(nth) <= len(hits):
            return None
        hits = [hits[int(nth) - 1]]
    if len(hits) != 1:
        return None
    i = hits[0]
    line = lines[i]
    indent = line[: len(line) - len(line.lstrip())]
    ending = "\n" if line.endswith("\n") else ""
    lines[i] = indent + m.replacement + ending
    return "".join(lines)


def check_imports(scratch: Path, python: str, env: dict[str, str]) -> None:
    """The scratch copy's packages must be the ones imported (not the editable install)."""
    out = subprocess.run(
        [
            python,
            "-c",
            "import exospherehost.broker as b, exospherehost as e; print(b.__file__, e.__file__)",
        ],
        cwd=scratch,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    if not all(Path(p).resolve().is_relative_to(scratch.resolve()) for p in out):
        raise SystemExit(f"the scratch copy is not what gets imported: {out}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("lists", nargs="*", type=Path, default=[ROOT / "tests/mutants/lua_mutants.txt"])
    ap.add_argument(
        "-k", dest="only", help="run only mutants whose id contains one of these (comma-separated)"
    )
    ap.add_argument("--timeout", type=float, default=600, help="seconds per mutant")
    ap.add_argument("--show", action="store_true", help="print pytest's output of each mutant")
    args = ap.parse_args()
    mutants = [m for f in args.lists for m in parse(f)]
    if args.only:
        wanted = args.only.split(",")
        mutants = [m for m in mutants if any(w in m.id for w in wanted)]
    python = str(ROOT / ".venv/bin/python")
    scratch = scratch_copy()
    env = {**os.environ, "PYTHONPATH": str(scratch), "PYTHONDONTWRITEBYTECODE": "1"}
    results: dict[str, str] = {}
    try:
        check_imports(scratch, python, env)
        for m in mutants:
            target = scratch / target_path(m)
            original = target.read_text()
            mutated = mutate(original, m)
            if mutated is None:
                results[m.id] = "ERROR"
                print(f"ERROR     {m.id}: line not found exactly once in {m.path} ({m.source})")
                continue
            target.write_text(mutated)
            started = time.monotonic()
            # Own process group: on a timeout (or Ctrl-C) pytest and the redis-server it
            # started go down together, nothing is left running.
            proc = subprocess.Popen(
                [python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *m.tests],
                cwd=scratch,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            try:
                out, err = proc.communicate(timeout=args.timeout)
                code = proc.returncode
                lines = out.strip().splitlines() or [""]
                if args.show:
                    print(out[-6000:], err[-2000:])
                why = [ln for ln in lines if ln.startswith(("FAILED ", "ERROR "))]
                tail = lines[-1] + (f"\n          {why[0][:300]}" if why else "")
            except subprocess.TimeoutExpired:
                code, tail = -1, f"timed out after {args.timeout:.0f}s (counted as killed)"
            finally:
                target.write_text(original)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is left
                proc.wait()
            took = time.monotonic() - started
            verdict = "SURVIVED" if code == 0 else "ERROR" if code in (4, 5) else "KILLED"
            results[m.id] = verdict
            print(f"{verdict:<9} {m.id} ({took:.0f}s): {tail}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    survivors = [i for i, v in results.items() if v != "KILLED"]
    killed = len(results) - len(survivors)
    print(f"\n{killed}/{len(results)} mutants killed")
    for i in survivors:
        print(f"  {results[i]}: {i}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())

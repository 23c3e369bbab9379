"""Settle ids that mutmut cannot check (issue 16): `_reseed` runs only in a forked child,
where mutmut records nothing, so its mutants show as "no tests"; this pins the promise."""

from __future__ import annotations

import os

from exospherehost.ids import new_id


def test_a_forked_child_does_not_repeat_the_parents_ids() -> None:
    before = new_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then out without running any cleanup
        try:
            os.write(write, f"{new_id()} {new_id()}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        child = f.read().split()
    os.waitpid(pid, 0)
    parent = [new_id(), new_id()]
    # Without the reseed the child would hand out exactly the parent's next two ids.
    assert len(child) == 2 and len(set(child) | set(parent) | {before}) == 5

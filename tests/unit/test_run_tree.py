"""`exosphere runs show`'s tree of states (cli/runtree.py): children under their parent, a
uniting state under the state it unites, wide fan-outs summed up, a bounded output."""

from __future__ import annotations

from exospherehost.cli import runtree
from tests.unit.test_run_dag import fan, graph, st

T = runtree.template_of(
    {
        "nodes": [
            {"identifier": "split", "node_name": "Split", "next_nodes": ["work"]},
            {"identifier": "work", "node_name": "Work", "next_nodes": ["label"]},
            {"identifier": "label", "node_name": "Label"},
            {"identifier": "collect", "node_name": "Collect", "unites": {"identifier": "split"}},
        ]
    }
)


def test_children_indented_and_the_unite_under_its_target() -> None:
    g = fan(3, failed={1})
    g.states["w1"].error = "RuntimeError: boom\nTraceback..."
    roots = runtree.build(g, T)
    lines = runtree.render(roots, g.states)
    assert lines == [
        "split  Split  SUCCEEDED  try 1  root",
        "├─ work  Work  SUCCEEDED  try 1  w0",
        "├─ work  Work  FAILED  try 1  w1  RuntimeError: boom",
        "├─ work  Work  SUCCEEDED  try 1  w2",
        "└─ collect  Collect  SUCCEEDED  try 1  unite  unites split root",
    ]
    assert runtree.as_json(roots[0])["children"][3]["unites"] == "root"


def test_a_unite_after_a_chain_finds_its_target_with_or_without_the_template() -> None:
    g = fan(2, label=True)  # split -> work -> label -> collect (unites split)
    for template in (T, runtree.Template()):
        lines = runtree.render(runtree.build(g, template), g.states)
        assert lines[0].startswith("split")
        assert lines[1] == "├─ work  Work  SUCCEEDED  try 1  w0"
        assert lines[2] == "│  └─ label  Label  SUCCEEDED  try 1  l0"
        assert lines[-1] == "└─ collect  Collect  SUCCEEDED  try 1  unite  unites split root"
    # One branch: the template tells the unite's target (its single parent would not).
    one = fan(1, label=True)
    lines = runtree.render(runtree.build(one, T), one.states)
    assert lines[-1] == "└─ collect  Collect  SUCCEEDED  try 1  unite  unites split root"


def test_wide_fan_outs_are_summed_up_failed_first_and_the_output_is_bounded() -> None:
    g = fan(10_000, failed={5_000}, label=True)
    lines = runtree.render(runtree.build(g, T), g.states, children=3)
    assert len(lines) == 1 + 3 * 2 + 1 + 1, lines
    assert "w5000" in lines[1] + lines[3] + lines[5]  # the failed branch is listed
    assert lines[-2] == "├─ ... 9,997 more: 9,997 SUCCEEDED (and 9,997 states under them)"
    assert lines[-1].startswith("└─ collect")
    capped = runtree.render(
        runtree.build(g, runtree.Template()), g.states, children=0, max_lines=50
    )
    assert len(capped) == 51
    assert capped[-1] == f"... {20_002 - 50:,} more states not shown (over 50 lines)"


def test_pending_states_and_short_ids() -> None:
    g = graph(st("a1b2c3d4e5f61", "split"), st("p", "", ["a1b2c3d4e5f61"], "PENDING"))
    lines = runtree.render(runtree.build(g, runtree.Template()), g.states)
    assert lines == [
        "split  Split  SUCCEEDED  try 1  …3d4e5f61",
        "└─ (pending)  -  PENDING  not run  p",
    ]
    # The template names it: its parent's only next node.
    named = runtree.render(runtree.build(g, T), g.states)
    assert named[1] == "└─ work  Work  PENDING  not run  p"


def test_a_retried_state_and_its_retry_say_so() -> None:
    from tests.unit.test_run_dag import retried

    g = retried(fan(2, failed={1}), "w1", "w1r")
    lines = runtree.render(runtree.build(g, T), g.states)
    assert "├─ work  Work  FAILED  try 1  w1  retried as w1r" in lines
    assert "├─ work  Work  SUCCEEDED  try 1  w1r  retry of w1" in lines
    assert lines[-1] == "└─ collect  Collect  SUCCEEDED  try 1  unite  unites split root"

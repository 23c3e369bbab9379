"""Unit tests for exospherehost.graph.templating (pure, no Redis)."""

from __future__ import annotations

from typing import Any

import pytest

from exospherehost.graph.templating import (
    OutputRef,
    StoreRef,
    Template,
    TemplateError,
    compile_template,
)

OUTPUTS: dict[str, dict[str, Any]] = {
    "fetch": {
        "count": 3,
        "ratio": 0.5,
        "ok": True,
        "none": None,
        "doc": {"a": 1, "b": [1, 2]},
        "items": ["x", "y"],
        "name": "alice",
    },
    "my-node": {"out_1": "dash"},
}
STORE: dict[str, Any] = {"region": "eu", "limit": 10}


def render(value: Any) -> Any:
    return compile_template(value).render(OUTPUTS, STORE)


# --- parsing -------------------------------------------------------------------------


def test_refs_for_output_and_store_placeholders() -> None:
    t = compile_template("${{ fetch.outputs.count }} in ${{ store.region }}")
    assert t.refs == (OutputRef("fetch", "count"), StoreRef("region"))


@pytest.mark.parametrize(
    "text",
    [
        "${{fetch.outputs.count}}",
        "${{   fetch.outputs.count   }}",
        "${{\tfetch . outputs . count\n}}",
    ],
)
def test_whitespace_inside_braces_is_optional(text: str) -> None:
    assert compile_template(text).refs == (OutputRef("fetch", "count"),)


def test_identifier_with_dash_and_digits() -> None:
    t = compile_template("${{ my-node.outputs.out_1 }}")
    assert t.refs == (OutputRef("my-node", "out_1"),)
    assert t.render(OUTPUTS, STORE) == "dash"


def test_refs_walk_nested_values_and_dedupe_in_order() -> None:
    value = {
        "a": ["${{ store.limit }}", {"deep": "x ${{ fetch.outputs.name }}"}],
        "b": "${{ store.limit }}",
        "c": 5,
    }
    assert compile_template(value).refs == (StoreRef("limit"), OutputRef("fetch", "name"))


def test_ref_placeholder_text() -> None:
    assert OutputRef("a", "x").placeholder == "${{ a.outputs.x }}"
    assert str(StoreRef("k")) == "${{ store.k }}"


# --- single placeholder: raw value, type preserved -----------------------------------


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("count", 3),
        ("ratio", 0.5),
        ("ok", True),
        ("none", None),
        ("doc", {"a": 1, "b": [1, 2]}),
        ("items", ["x", "y"]),
        ("name", "alice"),
    ],
)
def test_single_placeholder_preserves_type(field: str, expected: Any) -> None:
    result = render(f"  ${{{{ fetch.outputs.{field} }}}}\n")
    assert result == expected
    assert type(result) is type(expected)


def test_single_store_placeholder_preserves_type() -> None:
    assert render("${{ store.limit }}") == 10


# --- mixed text ----------------------------------------------------------------------


def test_mixed_text_stringifies_each_kind() -> None:
    text = (
        "n=${{ fetch.outputs.count }} r=${{ fetch.outputs.ratio }} "
        "ok=${{ fetch.outputs.ok }} none=${{ fetch.outputs.none }} "
        "doc=${{ fetch.outputs.doc }} items=${{ fetch.outputs.items }} "
        "name=${{ fetch.outputs.name }} region=${{ store.region }}"
    )
    assert render(text) == (
        'n=3 r=0.5 ok=true none=null doc={"a":1,"b":[1,2]} items=["x","y"] name=alice region=eu'
    )


def test_two_adjacent_placeholders_render_as_text() -> None:
    assert render("${{ store.region }}${{ store.limit }}") == "eu10"


def test_literal_text_around_single_placeholder_makes_it_a_string() -> None:
    assert render("x${{ fetch.outputs.count }}") == "x3"
    assert render("${{ fetch.outputs.count }} items") == "3 items"


def test_mixed_text_with_unserialisable_value_raises() -> None:
    t = compile_template("v=${{ a.outputs.x }}")
    with pytest.raises(TemplateError, match=r"a\.outputs\.x"):
        t.render({"a": {"x": {"k": object()}}}, {})


# --- nested structures and literals --------------------------------------------------


def test_nested_dict_and_list_render_recursively() -> None:
    value = {
        "query": {"limit": "${{ store.limit }}", "tags": ["${{ fetch.outputs.name }}", "fixed"]},
        "label": "for ${{ store.region }}",
        "n": 7,
        "flag": False,
        "nothing": None,
        "${{ not.a.key }}": "keys are not templated",
    }
    assert render(value) == {
        "query": {"limit": 10, "tags": ["alice", "fixed"]},
        "label": "for eu",
        "n": 7,
        "flag": False,
        "nothing": None,
        "${{ not.a.key }}": "keys are not templated",
    }


def test_tuple_is_rendered_as_tuple() -> None:
    assert render(("${{ store.limit }}", 1)) == (10, 1)


@pytest.mark.parametrize("value", ["plain text", 42, 1.5, True, None, {"a": [1, "b"]}, []])
def test_literals_pass_through(value: Any) -> None:
    t = compile_template(value)
    assert t.is_literal
    assert t.refs == ()
    assert t.render({}, {}) == value


def test_literal_renders_without_touching_outputs_or_store() -> None:
    class Exploding(dict[str, Any]):
        def __getitem__(self, key: str) -> Any:
            raise AssertionError("literal render must not look anything up")

    assert compile_template("no placeholders").render(Exploding(), Exploding()) == (
        "no placeholders"
    )


def test_compile_copies_the_source_value() -> None:
    source: dict[str, list[Any]] = {"a": ["${{ store.limit }}"], "b": [1]}
    t = compile_template(source)
    source["a"].append("later")
    source["b"].append(2)
    assert t.render({}, STORE) == {"a": [10], "b": [1]}


def test_dollar_and_braces_without_placeholder_are_literal() -> None:
    assert render("cost: ${x} {{y}} $ {") == "cost: ${x} {{y}} $ {"


def test_template_is_reusable_across_renders() -> None:
    t: Template = compile_template({"v": "${{ a.outputs.x }}"})
    assert t.render({"a": {"x": 1}}, {}) == {"v": 1}
    assert t.render({"a": {"x": 2}}, {}) == {"v": 2}


# --- render-time errors --------------------------------------------------------------


def test_missing_output_field_names_it() -> None:
    with pytest.raises(TemplateError, match=r"\$\{\{ fetch\.outputs\.nope \}\}.*no output 'nope'"):
        render("${{ fetch.outputs.nope }}")


def test_missing_output_identifier_names_it() -> None:
    with pytest.raises(TemplateError, match=r"ghost has no outputs"):
        render("x ${{ ghost.outputs.value }}")


def test_outputs_that_are_not_a_mapping_raise_template_error() -> None:
    with pytest.raises(TemplateError, match="no output 'x'"):
        compile_template("${{ a.outputs.x }}").render({"a": None}, {})  # type: ignore[dict-item]


def test_missing_store_key_names_it() -> None:
    with pytest.raises(TemplateError, match=r"store has no key 'absent'") as info:
        render({"k": ["${{ store.absent }}"]})
    assert info.value.text == "${{ store.absent }}"


# --- compile-time errors: malformed placeholders -------------------------------------


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        ("${{ a.output.x }}", "${{ a.output.x }}"),
        ("${{ a.outputs }}", "${{ a.outputs }}"),
        ("${{ }}", "${{ }}"),
        ("${{}}", "${{}}"),
        ("${{ a.outputs.x.y }}", "${{ a.outputs.x.y }}"),
        ("${{ store }}", "${{ store }}"),
        ("${{ store.a.b }}", "${{ store.a.b }}"),
        ("${{ 1a.outputs.x }}", "${{ 1a.outputs.x }}"),
        ("${{ a.outputs.x }", "${{ a.outputs.x }"),
        ("pre ${{ a.outputs.x", "${{ a.outputs.x"),
        ("ok ${{ a.outputs.x }} then ${{ bad }} end", "${{ bad }}"),
        ("${{ store.outputs.x }}", "${{ store.outputs.x }}"),
    ],
)
def test_malformed_placeholder_raises_naming_text(text: str, bad: str) -> None:
    with pytest.raises(TemplateError) as info:
        compile_template(text)
    assert bad in str(info.value)
    assert info.value.text == bad


def test_unclosed_placeholder_says_unclosed() -> None:
    with pytest.raises(TemplateError, match="unclosed"):
        compile_template("${{ a.outputs.x")


def test_malformed_placeholder_in_nested_value_names_location() -> None:
    with pytest.raises(TemplateError, match=r"\['cfg'\]\[1\]"):
        compile_template({"cfg": ["fine", "${{ a.outputs }}"]})


def test_template_error_is_value_error() -> None:
    assert issubclass(TemplateError, ValueError)

"""proxy.gojson against Go's encoding/json behaviour.

Expected values are what Go's json.Decoder does (its documentation, and checked against a
real go1.19 encoding/json while writing these), never what our code happens to return.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.ollama.gojson import (
    GO_MAX_DEPTH,
    MAX_DEPTH,
    Bound,
    Custom,
    GoObject,
    GoRejects,
    GoTypeError,
    RawNumber,
    Unreadable,
    bind,
    decode,
    encode,
    fold_name,
    go_any,
    names_match,
)

SCHEMA = {
    "model": "string", "prompt": "string", "raw": "bool", "top": "int", "f": "float", "stream": "pointer_bool",
    "format": "raw", "options": "map", "input": "any", "messages": "slice", "keep_alive": "any",
}


def bound(body: bytes, schema: dict[str, Any] = SCHEMA) -> Bound:
    return bind(decode(body), schema)


def same(a: Any, b: Any) -> bool:
    """Equal *and* of the same types all the way down (1, 1.0 and True are all == in Python)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return a == b and str(a) == str(b)  # also tells -0.0 from 0.0
    return a == b


# --- decode -------------------------------------------------------------------------------------


def test_object_keeps_every_pair_in_order() -> None:
    assert decode(b'{"a":1,"b":2,"a":3}') == GoObject([("a", 1), ("b", 2), ("a", 3)])


def test_object_and_array_are_different() -> None:
    assert decode(b"{}") != decode(b"[]")
    assert decode(b"[]") != decode(b"{}")


@pytest.mark.parametrize("body", [b"", b" ", b" \t\r\n "])
def test_empty_body_is_eof(body: bytes) -> None:
    with pytest.raises(GoRejects) as err:
        decode(body)
    assert err.value.eof  # Ollama: "missing request body"


@pytest.mark.parametrize("body", [b'{"model":"a"', b'{"model":', b"[1,", b'"abc', b"tru"])
def test_truncated_value_is_unexpected_eof_not_eof(body: bytes) -> None:
    with pytest.raises(GoRejects) as err:
        decode(body)
    assert not err.value.eof


@pytest.mark.parametrize("body, value", [
    (b'{"model":"a"} trailing garbage {', GoObject([("model", "a")])),
    (b'{"model":"a"}{"model":"b"}', GoObject([("model", "a")])),
    (b'{"model":"a"}\x00\xff', GoObject([("model", "a")])),
    (b"  \n[1]x", [1]),
    (b'"s"x', "s"),
    (b"truex", True),
    (b"01", 0),  # Go's scanner ends the number after the 0
    (b"1.5.3", 1.5),
    (b"1e5e", 100000.0),
])
def test_one_value_is_read_and_the_rest_ignored(body: bytes, value: Any) -> None:
    assert same(decode(body), value)


@pytest.mark.parametrize("body", [b"1.", b"1.x", b"1e", b"1E+", b"1.5e", b"-", b"-x"])
def test_top_level_number_cut_short_is_a_syntax_error(body: bytes) -> None:
    with pytest.raises(GoRejects):
        decode(body)


@pytest.mark.parametrize("body", [b"NaN", b"Infinity", b"-Infinity", b'{"a":NaN}', b"[Infinity]"])
def test_nan_and_infinity_are_rejected(body: bytes) -> None:
    with pytest.raises(GoRejects):
        decode(body)


@pytest.mark.parametrize("body", [b"\xef\xbb\xbf{}", b'{"a":1,}', b"{'a':1}", b'{"a":01}', b'{"a":"\x01"}',
                                  b'{"a":"\\x"}', b"[1 2]"])
def test_syntax_errors(body: bytes) -> None:
    with pytest.raises(GoRejects):
        decode(body)


@pytest.mark.parametrize("body, text", [
    (b'"a\xffb"', "a\ufffdb"),
    (b'"\xe2\x82A"', "\ufffd\ufffdA"),  # one U+FFFD per bad byte (Python's "replace" would give one)
    (b'"\xed\xa0\x80"', "\ufffd" * 3),  # UTF-8 encoded surrogate
    (b'"\xc0\x80"', "\ufffd" * 2),  # overlong NUL
    (b'"\\ud800"', "\ufffd"),
    (b'"\\udc00x"', "\ufffdx"),
    (b'"\\ud800\\u0041"', "\ufffdA"),
    (b'"\\ud83d\\ude00"', "\U0001f600"),
    (b'"\xf0\x9f\x98\x80"', "\U0001f600"),
])
def test_strings_as_go_unquotes_them(body: bytes, text: str) -> None:
    assert decode(body) == text


def test_invalid_utf8_in_keys_too() -> None:
    assert decode(b'{"mo\xffdel":"x","\\ud800":[{"\\udfff":1}]}') == GoObject(
        [("mo\ufffddel", "x"), ("\ufffd", [GoObject([("\ufffd", 1)])])])


def test_utf16_is_not_detected() -> None:
    with pytest.raises(GoRejects):
        decode('{"model":"a"}'.encode("utf-16"))


def nested(levels: int) -> bytes:
    return b'{"x":' + b"[" * levels + b"]" * levels + b"}"


def test_ten_levels_are_fine() -> None:
    assert bound(nested(10)).rest == GoObject([("x", decode(b"[" * 10 + b"]" * 10))])


def test_deep_nesting_go_accepts_is_unreadable_not_rejected() -> None:
    # The object is one level, so 9999 brackets make Go's 10000: still accepted by Go.
    with pytest.raises(Unreadable):
        decode(nested(GO_MAX_DEPTH - 1))
    with pytest.raises(Unreadable):
        decode(nested(MAX_DEPTH))


def test_deeper_than_go_allows_is_rejected() -> None:
    with pytest.raises(GoRejects):
        decode(nested(GO_MAX_DEPTH))  # 10001 levels: "exceeded max depth"


def test_depth_counts_only_the_first_value() -> None:
    assert decode(b'"x" ' + b"[" * 20000) == "x"
    assert decode(b"{}" + b"[" * 20000) == GoObject()


def test_brackets_inside_strings_are_not_nesting() -> None:
    assert decode(b'{"x":"' + b"[" * 20000 + b'"}') == GoObject([("x", "[" * 20000)])


def test_numbers() -> None:
    value = decode(b"[1, -0, 1.0, 1e2, -0.0, 12345678901234567890123, 1e400, -1e400, 1e-400]")
    assert same(value, [1, 0, 1.0, 100.0, -0.0, 12345678901234567890123, RawNumber("1e400"),
                        RawNumber("-1e400"), 0.0])


def test_huge_integer_literal_is_kept_verbatim() -> None:
    digits = "9" * 5000
    assert decode(digits.encode()) == RawNumber(digits)


def test_go_any_numbers_are_float64_and_overflow_is_a_type_error() -> None:
    assert same(go_any(decode(b'{"a":1,"b":[2,{"c":3.5}],"a":4}')), {"a": 4.0, "b": [2.0, {"c": 3.5}]})
    assert same(go_any(12345678901234567890), 1.2345678901234567e19)
    for bad in (RawNumber("1e400"), 10 ** 400, [RawNumber("9" * 5000)]):
        with pytest.raises(GoTypeError):
            go_any(bad)


# --- encode -------------------------------------------------------------------------------------


def test_encode_is_compact_ascii_in_order_with_duplicates() -> None:
    value = GoObject([("b", 1), ("a", [True, None, "é"]), ("b", -0.0), ("n", RawNumber("1e400"))])
    assert encode(value) == b'{"b":1,"a":[true,null,"\\u00e9"],"b":-0.0,"n":1e400}'


def test_encode_refuses_what_json_cannot_say() -> None:
    with pytest.raises(ValueError):
        encode(float("inf"))
    with pytest.raises(TypeError):
        encode({1: 2})
    with pytest.raises(TypeError):
        encode(object())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text() | st.builds(RawNumber, st.sampled_from(["1e400", "-1e999", "9" * 5000])),
    lambda children: st.lists(children, max_size=4)
    | st.lists(st.tuples(st.text(max_size=5), children), max_size=4).map(GoObject),
    max_leaves=25,
)


@given(json_values)
@settings(max_examples=400)
def test_decode_encode_round_trip(value: Any) -> None:
    # Text with lone surrogates is not something decode() can produce (Go makes them U+FFFD).
    if "\\ud" in encode(value).decode().lower():
        return
    assert same(decode(encode(value)), value)


# --- folding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("key, name", [
    ("Model", "model"), ("MODEL", "model"), ("mOdEl", "model"),
    ("option\u017f", "options"), ("OPTION\u017f", "options"),  # ſ (long s) folds with s
    ("\u212aeep_alive", "keep_alive"), ("\u212aEEP_ALIVE", "keep_alive"),  # Kelvin sign folds with k
    ("\u1e9e", "\u00df"),  # ẞ and ß are one simple-fold orbit
    ("\u03c3", "\u03c2"), ("\u03a3", "\u03c2"),  # σ ς Σ
])
def test_names_that_go_matches(key: str, name: str) -> None:
    assert names_match(key, name)


@pytest.mark.parametrize("key, name", [
    ("\u00df", "ss"),  # full folding (str.casefold) would match; Go's simple folding does not
    ("stra\u00dfe", "strasse"),
    ("\u0130", "i"), ("\u0131", "i"),  # dotted/dotless I have no simple fold
    ("keep-alive", "keep_alive"), ("keepalive", "keep_alive"), ("model ", "model"),
    ("mod\u0435l", "model"),  # Cyrillic e
    ("\uff4d\uff4f\uff44\uff45\uff4c", "model"),  # fullwidth letters
])
def test_names_that_go_does_not_match(key: str, name: str) -> None:
    assert not names_match(key, name)


def test_fold_name_is_one_key_per_class() -> None:
    assert fold_name("MODEL") == fold_name("model") == fold_name("Model")
    assert fold_name("\u212a") == fold_name("k") and fold_name("\u017f") == fold_name("S")


# --- bind: last wins, null rules, merging ------------------------------------------------------


@pytest.mark.parametrize("body, model", [
    (b'{"model":"small","Model":"big"}', "big"),
    (b'{"Model":"big","model":"small"}', "small"),
    (b'{"Model":"big","model":null}', "big"),  # null into a string is a no-op
    (b'{"model":"a","MODEL":"b","mOdEl":"c"}', "c"),
    (b'{"model":"a","model\\u0000":"b"}', "a"),
])
def test_last_matching_key_wins(body: bytes, model: str) -> None:
    assert bound(body).values["model"] == model


def test_null_keeps_string_bool_int_and_float() -> None:
    b = bound(b'{"prompt":"p","raw":true,"top":3,"f":1.5,"prompt":null,"raw":null,"top":null,"f":null}')
    assert same(b.values, {"prompt": "p", "raw": True, "top": 3, "f": 1.5})


def test_null_clears_map_pointer_interface_and_slice() -> None:
    b = bound(b'{"options":{"a":1},"stream":true,"input":"x","messages":[1],'
              b'"options":null,"stream":null,"input":null,"messages":null}')
    assert b.values == {}


def test_null_into_raw_message_is_stored() -> None:
    assert bound(b'{"format":{"type":"object"},"format":null}').values == {"format": None}


def test_options_from_two_spellings_merge() -> None:
    b = bound(b'{"options":{"num_ctx":1},"OPTIONS":{"num_gpu":0}}')
    assert same(b.values["options"], {"num_ctx": 1.0, "num_gpu": 0.0})


def test_null_between_resets_the_map() -> None:
    b = bound(b'{"options":{"a":1},"options":null,"Options":{"b":2}}')
    assert same(b.values["options"], {"b": 2.0})


def test_merge_replaces_a_key_value_whole() -> None:
    b = bound(b'{"options":{"a":{"x":1},"c":1},"options":{"a":{"y":2},"c":null}}')
    assert same(b.values["options"], {"a": {"y": 2.0}, "c": None})


def test_duplicate_keys_inside_the_map_last_wins() -> None:
    assert same(bound(b'{"options":{"num_ctx":1,"num_ctx":2,"NUM_CTX":3}}').values["options"],
                {"num_ctx": 2.0, "NUM_CTX": 3.0})  # map keys are exact


def test_interface_field_is_replaced_not_merged() -> None:
    b = bound(b'{"input":{"a":1},"input":{"b":2}}')
    assert same(b.values["input"], {"b": 2.0})


def test_long_s_and_kelvin_reach_their_fields() -> None:
    b = bound(b'{"option\xc5\xbf":{"num_ctx":8},"\xe2\x84\xaaeep_alive":"0"}')
    assert same(b.values, {"options": {"num_ctx": 8.0}, "keep_alive": "0"})


def test_sharp_s_does_not_match_ss() -> None:
    b = bind(decode('{"stra\u00dfe":1}'.encode()), {"strasse": "int"})
    assert b.values == {} and b.rest == GoObject([("stra\u00dfe", 1)])


def test_exact_match_is_preferred_and_first_field_wins_a_fold_tie() -> None:
    schema = {"Ab": "string", "aB": "string"}
    assert bind(decode(b'{"aB":"x"}'), schema).values == {"aB": "x"}
    assert bind(decode(b'{"ab":"y"}'), schema).values == {"Ab": "y"}


def test_unmatched_pairs_stay_in_order() -> None:
    b = bound(b'{"x":1,"model":"m","y":[2],"x":3}')
    assert b.rest == GoObject([("x", 1), ("y", [2]), ("x", 3)])


@pytest.mark.parametrize("body", [
    b'{"model":1}', b'{"model":{}}', b'{"model":[]}', b'{"raw":"true"}', b'{"raw":0}',
    b'{"top":1.0}', b'{"top":1e2}', b'{"top":"1"}', b'{"top":9223372036854775808}',
    b'{"f":1e400}', b'{"f":"1"}', b'{"stream":1}', b'{"options":[]}', b'{"options":"x"}',
    b'{"options":{"a":1e400}}', b'{"input":[1e400]}', b'{"messages":{}}', b'{"messages":"x"}',
])
def test_wrong_types_are_type_errors(body: bytes) -> None:
    assert bound(body).type_error is not None


def test_first_type_error_is_kept_and_decoding_goes_on() -> None:
    b = bound(b'{"model":1,"prompt":2,"model":"ok"}')
    assert "string" in (b.type_error or "") and b.values == {"model": "ok"}


@pytest.mark.parametrize("body", [b"[]", b'"x"', b"1", b"true"])
def test_top_level_non_object_is_a_type_error(body: bytes) -> None:
    assert bound(body).type_error is not None


def test_top_level_null_is_an_empty_struct() -> None:
    b = bound(b"null")
    assert b.values == {} and b.type_error is None and b.rebuild() == GoObject()


def test_int_bounds() -> None:
    assert bound(b'{"top":-9223372036854775808}').values["top"] == -(2 ** 63)
    assert bound(b'{"top":9223372036854775807}').values["top"] == 2 ** 63 - 1
    assert bound(b'{"top":-0}').values["top"] == 0


def test_custom_unmarshaler_error_stops_decoding() -> None:
    schema = {"d": Custom("d", lambda v: None if isinstance(v, str) else "bad"), "model": "string"}
    b = bind(decode(b'{"model":5,"d":true,"d":"ok"}'), schema)
    assert b.type_error == "bad"  # Go returns the UnmarshalJSON error, not the saved type error
    assert bind(decode(b'{"d":"a","d":null}'), schema).values == {}


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError):
        bind(GoObject(), {"x": "number"})


# --- rebuild ------------------------------------------------------------------------------------


def test_rebuild_is_one_pair_per_set_field_then_the_rest() -> None:
    b = bound(b'{"zz":1,"Model":"a","options":{"x":1},"MODEL":"b","OPTIONS":{"y":2},"zz":2,"format":null}')
    assert encode(b.rebuild()) == b'{"model":"b","format":null,"options":{"x":1.0,"y":2.0},"zz":1,"zz":2}'


def test_rebuild_refuses_a_body_go_rejects() -> None:
    with pytest.raises(ValueError):
        bound(b'{"model":1}').rebuild()


keys = st.sampled_from(["model", "Model", "MODEL", "prompt", "raw", "RAW", "top", "f", "stream", "format",
                        "options", "Options", "option\u017f", "input", "messages", "keep_alive",
                        "\u212aeep_alive", "other", "Other", "x"])
bodies = st.lists(st.tuples(keys, json_values), max_size=8).map(GoObject)


@given(bodies)
@settings(max_examples=400)
def test_bind_rebuild_bind_gives_the_same_struct(obj: GoObject) -> None:
    first = bind(obj, SCHEMA)
    if first.type_error is not None:
        return
    again = bind(decode(encode(first.rebuild())), SCHEMA)
    assert again.type_error is None
    assert same(again.values, first.values)
    assert again.rest == first.rest

"""JSON tensor bodies written as text, for the decoder properties: number literals as a client
may write them (integers small and past 2^53, exponents, -0, subnormals, huge values, nulls,
booleans), whitespace, ragged and mixed nesting, duplicate or unknown members, a byte order
mark."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

_digits = st.text("0123456789", min_size=1, max_size=25)
_mantissa = st.builds(
    lambda sign, whole, frac: sign + str(int(whole)) + ("." + frac if frac else ""),
    st.sampled_from(["", "-"]),
    _digits,
    st.one_of(st.just(""), _digits),
)
exponent_literals = st.builds(
    lambda m, e, sign, x: f"{m}{e}{sign}{x}",
    _mantissa,
    st.sampled_from(["e", "E"]),
    st.sampled_from(["", "+", "-"]),
    st.integers(0, 330),
)
float_literals = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(width=32, allow_nan=False, allow_infinity=False).map(repr),
    st.floats(min_value=-1e-300, max_value=1e-300).map(repr),  # subnormals and tiny
    _mantissa,
    exponent_literals,
)
int_literals = st.one_of(
    st.integers(-(2**53), 2**53),
    st.integers(-(2**70), 2**70),
    st.sampled_from([2**53 - 1, 2**53, 2**53 + 1, 2**63, 2**64 - 1, 2**64, 10**30]),
    st.integers(0, 9),
).map(str)
special_literals = st.sampled_from(
    [
        *("-0", "0", "-0.0", "0.0", "0e0", "-0e-0", "5e-324", "2.2250738585072014e-308"),
        *("1e308", "1.7976931348623157e308", "3.4028235e38", "3.4028236e38", "1e39", "-1e39"),
        *("1e400", "16777217", "9007199254740993", "null", "true", "false", '"1"', "[]", "{}"),
    ]
)
common_literals = st.one_of(float_literals, int_literals)
literals = st.one_of(common_literals, special_literals)
spaces = st.sampled_from(["", "", "", " ", "\n", "\t ", "\r\n"])


@st.composite
def nested_text(draw: st.DrawFn, literal: st.SearchStrategy[str], ragged: bool) -> str:
    """A rectangular nested list of ``literal`` (1-4 levels, 1-4 per level) as JSON text; with
    ``ragged``, maybe one row's length changed or one number made a list."""
    dims = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    count = int(np.prod(dims))
    values = draw(st.lists(literal, min_size=count, max_size=count))
    if ragged and draw(st.booleans()):
        at = draw(st.integers(0, count - 1))
        values[at] = draw(st.sampled_from(["[1]", "[]", "[1, 2]", "[[3]]"]))
    sp = draw(spaces)

    def text(level: int, flat: list[str]) -> str:
        if level == len(dims):
            return flat[0]
        step = len(flat) // dims[level]
        parts = [text(level + 1, flat[i * step : (i + 1) * step]) for i in range(dims[level])]
        if ragged and level == len(dims) - 1 and draw(st.integers(0, 9)) == 0:
            parts = parts[:-1] if len(parts) > 1 else parts + parts
        return f"[{sp}" + f"{sp},{sp}".join(parts) + f"{sp}]"

    return text(0, values)


@st.composite
def bodies(draw: st.DrawFn, literal: st.SearchStrategy[str], odd: bool) -> bytes:
    """A JSON tensor body: bare list, ``{"data": ...}``, maybe ``dtype``, or flat + ``shape``;
    with ``odd``, the near misses: ragged, duplicate or unknown members, a byte order mark."""
    data = draw(nested_text(literal, ragged=odd))
    members = [f'"data": {data}']
    form = draw(st.sampled_from(["bare", "object", "shape"]))
    if form == "shape":
        flat = draw(st.lists(literal, min_size=1, max_size=12))
        dims = draw(st.sampled_from([[len(flat)], [1, len(flat)], [len(flat), 1], [-1], [0]]))
        if not odd:
            dims = [len(flat)] if len(flat) % 2 else [2, len(flat) // 2]
        members = [f'"data": [{", ".join(flat)}]', f'"shape": {dims}']
    if draw(st.booleans()):
        names = ["float32", "float64", "float16", "bfloat16"] + (["int8", "[", ""] if odd else [])
        dtype = draw(st.sampled_from(names))
        members.insert(draw(st.integers(0, len(members))), f'"dtype": "{dtype}"')
    if odd and draw(st.booleans()):
        members.insert(
            draw(st.integers(0, len(members))),
            draw(st.sampled_from(['"data": [1]', '"note": "["', '"shape": null', '"x": []'])),
        )
    text = data if form == "bare" else "{" + ", ".join(members) + "}"
    if odd and draw(st.integers(0, 9)) == 0:
        text = "\ufeff" + text
    return text.encode()

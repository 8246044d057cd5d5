"""The pyarrow compute kernels the bulk CSV reader uses, called by name.

``import pyarrow.compute`` builds a documented Python wrapper for each of its ~300 kernels
(about 20 ms, a tenth of a small ``tools/score.py`` run). The reader needs a dozen, so it calls
them through ``call_function`` of pyarrow's compiled compute module, with the same options and
defaults as the public wrappers; where that module is not importable under that name (another
pyarrow layout), the public ``pyarrow.compute`` supplies the same names. Array methods such as
``Array.take`` import ``pyarrow.compute`` themselves, so :func:`take` is here too.
"""

from __future__ import annotations

import sys

import pyarrow as pa

try:
    from pyarrow import _compute as _c
except ImportError:  # pragma: no cover - the public module has the same names
    import pyarrow.compute as _c

_call = _c.call_function


def take(values, idx):
    return _call("take", [values, idx])


def utf8_trim(values, characters: str):
    return _call("utf8_trim", [values], _c.TrimOptions(characters))


def utf8_ltrim(values, characters: str):
    return _call("utf8_ltrim", [values], _c.TrimOptions(characters))


def match_substring_regex(values, pattern: str):
    return _call("match_substring_regex", [values], _c.MatchSubstringOptions(pattern))


def count_substring(values, pattern: str):
    return _call("count_substring", [values], _c.MatchSubstringOptions(pattern))


def extract_regex(values, pattern: str):
    return _call("extract_regex", [values], _c.ExtractRegexOptions(pattern))


def struct_field(values, field):
    return _call("struct_field", [values], _c.StructFieldOptions(field))


def split_pattern(values, pattern: str, max_splits: int | None = None):
    return _call("split_pattern", [values], _c.SplitPatternOptions(pattern, max_splits=max_splits))


def replace_substring(values, pattern: str, replacement: str):
    return _call("replace_substring", [values],
                 _c.ReplaceSubstringOptions(pattern, replacement))


def utf8_slice_codeunits(values, start: int):
    return _call("utf8_slice_codeunits", [values], _c.SliceOptions(start, sys.maxsize))


def cast_float64(values):
    return _call("cast", [values], _c.CastOptions.safe(pa.float64()))


def count_distinct(values) -> int:
    return _call("count_distinct", [values], _c.CountOptions("only_valid")).as_py()


def all_true(values) -> bool:
    """True when every value is true (an empty array: False, as ``pc.all`` gives null)."""
    return bool(_call("all", [values]).as_py())


def _unary(name: str):
    def kernel(values):
        return _call(name, [values])

    kernel.__name__ = name
    kernel.__doc__ = f"pyarrow's {name!r} kernel with its default options."
    return kernel


list_parent_indices = _unary("list_parent_indices")
list_flatten = _unary("list_flatten")
list_value_length = _unary("list_value_length")
ascii_split_whitespace = _unary("ascii_split_whitespace")
dictionary_encode = _unary("dictionary_encode")

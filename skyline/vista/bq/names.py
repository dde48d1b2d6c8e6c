"""The one sanitising rule for a BigQuery primary value used as a metric-name element.

A primary value (a country, a product name, an e-mail domain...) becomes the middle element of
``<metric_prefix>.<primary value>.<dimension>``. Carbon reads a dot as a new path level and a
slash as a new directory, and Flux accepts only ASCII letters, digits and ``+ - % . _ / = :``,
so the value is rewritten by this rule, applied in this order:

1. Unicode NFKD, then combining marks dropped: ``Zürich`` → ``Zurich``, ``Café`` → ``Cafe``;
   compatibility forms fold (``ﬁ`` → ``fi``, full-width ``Ａ`` → ``A``).
2. ASCII letters, digits, ``-`` and ``_`` are kept.
3. Any other ASCII character (dot, space, slash, quote, ``*``, ``%``, control...) becomes ``_``.
4. Any other non-ASCII character becomes ``u`` and its code point in lower-case hex
   (``東京`` → ``u6771u4eac``), so scripts without a Latin fold stay distinct and readable.
5. An empty result (an empty or all-blank value) is not a name: the row is bad.

Different values can still end up alike (``"a.b"`` and ``"a b"`` both give ``a_b``); the
converter treats the second one as an error for its row, never as a silent merge.
"""

from __future__ import annotations

import string
import unicodedata
from functools import lru_cache

_KEEP = frozenset(string.ascii_letters + string.digits + "-_")


@lru_cache(maxsize=65536)
def sanitise(value: str) -> str:
    """The metric-name element for a primary value (see the module docstring); '' if none."""
    if value and all(c in _KEEP for c in value):
        return value
    out: list[str] = []
    for char in unicodedata.normalize("NFKD", value.strip()):
        if char in _KEEP:
            out.append(char)
        elif unicodedata.combining(char):
            continue
        elif char.isascii():
            out.append("_")
        else:
            out.append(f"u{ord(char):x}")
    return "".join(out)

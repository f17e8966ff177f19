"""Durations (`90s`, `10m`, `1h30m`) and memory sizes (`512M`, `4G`)."""

from __future__ import annotations

import math
import re

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_duration(text: str) -> float:
    """Seconds in `text`: a number of seconds, or parts like `1h30m`, `90s`, `1.5h`, `250ms`.

    Raises ValueError with a message that shows the accepted forms.
    """
    s = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", s):
        value = float(s)
    else:
        pos = 0
        value = 0.0
        for m in _DURATION_PART.finditer(s):
            if m.start() != pos:
                break
            value += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
            pos = m.end()
        if pos != len(s) or not s:
            raise ValueError(f"'{text}' is not a duration; write e.g. '90s', '10m', '1h30m'")
    if not math.isfinite(value):
        raise ValueError(f"'{text}' is too long a duration")
    if value <= 0:
        raise ValueError(f"'{text}' must be longer than zero")
    return value


def parse_size(text: str) -> int:
    """Bytes in `text`: `512M`, `4G`, `4GiB`, `100K`, or a plain number of bytes.

    K, M, G and T are powers of 1024, as in `docker --memory` and `ulimit`.
    """
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"'{text}' is not a memory size; write e.g. '512M' or '4G'")
    value = float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()]
    if not math.isfinite(value):
        raise ValueError(f"'{text}' is too large a memory size")
    return int(value)


def format_size(n: int) -> str:
    """The shortest exact `parse_size` spelling of `n` bytes."""
    for unit in ("T", "G", "M", "K"):
        if n and n % _SIZE_UNITS[unit] == 0:
            return f"{n // _SIZE_UNITS[unit]}{unit}"
    return str(n)


def approx_size(n: int) -> str:
    """`n` bytes to a tenth of the largest unit it reaches (`23.4G`), for messages."""
    for unit in ("T", "G", "M", "K"):
        if n >= _SIZE_UNITS[unit]:
            return f"{n / _SIZE_UNITS[unit]:.1f}".removesuffix(".0") + unit
    return str(n)

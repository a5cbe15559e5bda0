"""Docker's size notation ("64m", "1.5g", "512k", "100"), binary multiples."""

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*$", re.IGNORECASE)
_MULTIPLIERS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_size(text: str) -> int:
    """Bytes in `text`; raises ValueError saying what a valid size looks like."""
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(
            f"invalid size {text!r}: use a number with an optional unit "
            "b, k, m, g (for example 64m or 1g)"
        )
    number, unit = match.groups()
    return int(float(number) * _MULTIPLIERS[unit.lower()])


def format_size(size_bytes: float) -> str:
    """Human size the way docker's tables show it (decimal units, 3 digits)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(size_bytes) < 1000 or unit == "TB":
            break
        size_bytes /= 1000
    return f"{size_bytes:.4g}{unit}"


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0,
                     "m": 60.0, "h": 3600.0}


def parse_duration_s(text: str) -> float:
    """Seconds in a Go-style duration ("100ms", "1m30s", "2h"); "0" is zero."""
    text = str(text).strip()
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS_S[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(
            f"invalid duration {text!r}: use a number with a unit, "
            "for example 100ms, 5s, 1m or 1m30s"
        )
    return total

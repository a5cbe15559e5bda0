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

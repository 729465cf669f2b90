"""The one strict parser for user-supplied whole numbers (query values and settings alike)."""

import re

# Python's int() also accepts signs, spaces, underscores and non-ASCII digits; this accepts
# plain ASCII decimal digits only, and few enough of them to parse in constant time.
MAX_DIGITS = 12
_DIGITS = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}")


def parse_bounded(text: str, lowest: int, highest: int) -> int | None:
    """The value of `text` if it is plain decimal digits within [lowest, highest], else None."""
    if not _DIGITS.fullmatch(text):
        return None
    value = int(text)
    if value < lowest or value > highest:
        return None
    return value

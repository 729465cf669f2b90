"""Malformed input shared by the parsing tests and the wire tests."""

# Every class of malformed number, each of which Python's int() or a lax parser might accept.
BAD_NUMBERS = {
    "plus sign": "+5",
    "minus sign": "-5",
    "leading space": " 5",
    "trailing space": "5 ",
    "inner space": "1 0",
    "decimal point": "5.0",
    "exponent": "1e3",
    "hex": "0x10",
    "underscore": "1_0",
    "arabic-indic digit": "\u0663",
    "fullwidth digit": "\uff15",
    "superscript digit": "\u00b2",
    "empty": "",
    "letters": "ten",
    "infinity": "inf",
    "over-long": "0" * 12 + "1",
    "newline": "5\n",
    "nul": "5\x00",
}

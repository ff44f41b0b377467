"""Text from outside (file names, labels, messages naming them) made safe to print on one line. Imports nothing."""
from __future__ import annotations

import re

_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def printable(text) -> str:
    """`text` safe to print: labels and names come from files tledge did not write (control characters, newlines,
    bidirectional overrides and lone surrogates as escapes)."""
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}",
                       str(text))

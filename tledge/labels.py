"""Labels files as people have them: one class name per line, or Teachable Machine's `0 name` lines (or
`0<TAB>name`)."""
from __future__ import annotations

from pathlib import Path

from tledge.errors import ContractError


def read_labels(path: str | Path) -> tuple[str, ...]:
    """One label per line; also Teachable Machine's `0 name` lines. Blank lines before and after the labels are
    dropped; one between them is refused (dropping it would shift every later label by one class)."""
    p = Path(path)
    if not p.is_file():
        raise ContractError(f"labels file not found: {p}")
    try:
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8-sig").splitlines()]
    except UnicodeDecodeError as exc:  # was read with U+FFFD in place of the letter, and embedded so
        line = p.read_bytes()[: exc.start].count(b"\n") + 1
        raise ContractError(f"labels file {p}: line {line} is not UTF-8 (byte 0x{exc.object[exc.start]:02x}): "
                            "save it as UTF-8") from None
    filled = [i for i, ln in enumerate(lines) if ln]
    if not filled:
        raise ContractError(f"labels file is empty: {p}")
    blank = [i + 1 for i in range(filled[0], filled[-1]) if not lines[i]]
    if blank:
        raise ContractError(f"labels file {p}: line {blank[0]} is empty between labels (a class without a name?): "
                            "name it, or delete the line if it is not a class")
    lines = lines[filled[0]:filled[-1] + 1]
    parts = [ln.split(None, 1) for ln in lines]  # `0 name` and `0<TAB>name` (a tab kept the index in every label)
    if all(len(pp) == 2 and pp[0].isdigit() for pp in parts) and \
            [int(pp[0]) for pp in parts] == list(range(int(parts[0][0]), int(parts[0][0]) + len(parts))):
        return tuple(pp[1].strip() for pp in parts)
    return tuple(lines)

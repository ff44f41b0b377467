"""Labels files as people have them: one class name per line, or Teachable Machine's `0 name` lines (or
`0<TAB>name`)."""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from pathlib import Path

from tledge.errors import ContractError, DataError


def read_labels(path: str | Path, numbered: bool = True) -> tuple[str, ...]:
    """One label per line; also Teachable Machine's `0 name` lines (unless `numbered` is False, or taking the numbers
    off would merge many classes: `0 stars`, `1 star`, `2 stars` are names; ImageNet's two cranes are not many). Blank lines before and after the
    labels are dropped; one between them is refused (dropping it would shift every later label by one class); a
    control character in a label is refused (MediaPipe cut `bees<NUL>zero` to `bees`)."""
    p = Path(path)
    if not p.is_file():
        raise ContractError(f"labels file not found: {p}")
    if p.suffix.lower() == ".json":
        return _json_labels(p)
    try:
        # lines end at "\n" only, as MediaPipe and labels.txt writers split them (str.splitlines also broke at a
        # form feed or U+2028 inside a label: "12 labels for 11 outputs", "line 4 is empty" of a line that was not)
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8-sig").split("\n")]
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
    # numbered 0, 1, 2, ... as Teachable Machine and Coral number them: classes named `1 star`, `2 stars` (a
    # tledge labels.txt) lost their numbers when any run of numbers was taken for indices
    if numbered and all(len(pp) == 2 and pp[0].isascii() and pp[0].isdigit() for pp in parts) and \
            [int(pp[0]) for pp in parts] == list(range(len(parts))):
        names = tuple(pp[1].strip() for pp in parts)
        # the numbers are names when taking them off merges many classes (`0 stars`, `1 star`, `2 stars`); a
        # pair of one name stays a pair (ImageNet's two cranes: a numbered ImageNet file kept "89  macaw")
        if len(set(names)) >= 0.9 * len(names):
            lines = list(names)
    for i, name in enumerate(lines):
        why = name_problem(name)
        if why:
            raise ContractError(f"labels file {p}: line {filled[0] + i + 1} ({name[:40]!r}): {why}")
    return tuple(lines)


def _json_labels(p: Path) -> tuple[str, ...]:
    """A .json labels file, parsed: a list of names, {"0": "name", ...}, or PyTorch's imagenet_class_index.json
    {"0": ["n01440764", "tench"], ...} (the last string of each). Read as lines, `{"0": "ants", ...}` was one label."""
    from tledge.safejson import loads_json

    try:
        data = loads_json(p.read_text(encoding="utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ContractError(f"labels file {p} is not valid JSON ({exc})") from None
    if isinstance(data, dict):
        keys = list(data)
        if not all(k.isascii() and k.isdigit() for k in keys) or sorted(map(int, keys)) != list(range(len(keys))):
            raise ContractError(f"labels file {p}: a JSON object's keys must be the class indices 0..{len(keys) - 1}")
        data = [v for _, v in sorted((int(k), v) for k, v in data.items())]
    if not isinstance(data, list) or not data:
        raise ContractError(f"labels file {p}: expected a JSON list of names or an object of index: name")
    names = [d[-1] if isinstance(d, list) and d and all(isinstance(x, str) for x in d) else d for d in data]
    if not all(isinstance(n, str) and n.strip() for n in names):
        raise ContractError(f"labels file {p}: every label must be a non-empty string (or a list ending in one)")
    for i, n in enumerate(names):  # a text file cannot hold a line break in a label; a JSON string can
        why = name_problem(n.strip())
        if why:
            raise ContractError(f"labels file {p}: label {i} ({n[:40]!r}): {why}")
    return tuple(n.strip() for n in names)


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a class name, or None. Every exported file carries the labels as lines of UTF-8 text
    (labels.txt, the TFLite metadata's label file MediaPipe reads): a line break inside a name gave MediaPipe more
    labels than outputs (it refused the file), a carriage return or an escape code reached terminals, and white
    space at either end is stripped when a labels file is read back (`ant ` became a second `ant`)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "not UTF-8 (another system's encoding, e.g. an old zip)"
    bad = next((c for c in name if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
    if bad is not None:
        return f"a control character or line break (U+{ord(bad):04X})"
    if name != name.strip():
        return "white space at the start or end"
    return None


def refuse_unicode_order(names, *, where: str) -> None:
    """A DataError when class folder names sort otherwise written composed (NFC) than as they are (NFD: macOS and
    its zips): as the outputs' names, their order is the training machine's, which depends on how it spelt them
    (`cafe\u0301` sorts before `cafz`, `café` after: a model with no labels of its own had two outputs swapped)."""
    names = list(names)
    composed = [unicodedata.normalize("NFC", n) for n in names]
    if composed == names or sorted(composed) == [unicodedata.normalize("NFC", n) for n in sorted(names)]:
        return
    raise DataError(f"class folder names in {where} are written decomposed (NFD, as macOS writes them) and sort in "
                    "another order than composed (NFC): which output each one names depends on how the training "
                    "machine spelt them; pass --labels FILE with the model's labels in output order")


def check_names(names, *, where: str, encoding_only: bool = False) -> None:
    """DataError naming every class name `name_problem` refuses, in one line. encoding_only: names that are matched
    to labels, never become them (validation folders): only their encoding counts."""
    bad = [(n, why) for n, why in ((n, name_problem(n)) for n in names)
           if why and (not encoding_only or why.startswith("not UTF-8"))]
    if bad:
        shown = "; ".join(f"{why}: {ascii(n)}" for n, why in bad[:4]) + (f"; ... ({len(bad)} names)" if len(bad) > 4
                                                                       else "")
        raise DataError(f"class folder name(s) in {where} cannot be labels: {shown}; rename them")


# ---- class folders matched to labels by name -------------------------------------------------------
def label_key(name: str, *, drop_index: bool) -> str:
    """'001_Great-White shark' -> 'great white shark' (drop_index also drops a leading '001_'). Unicode NFC first:
    macOS and its zips write 'bées' decomposed (NFD), other systems composed."""
    key = re.sub(r"[\s_\-]+", " ", unicodedata.normalize("NFC", name).lower()).strip()
    return re.sub(r"^\d+ ", "", key) if drop_index else key


def reordered_at(given, own) -> int | None:
    """The first position where `given` and `own` differ when they name the same labels in another order (names
    compared as `match_labels` does: case, spaces, Unicode form aside); None otherwise."""
    a, b = ([label_key(n, drop_index=False) for n in names] for names in (given, own))
    if len(a) != len(b) or a == b or sorted(a) != sorted(b):
        return None
    return next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)


def refuse_reordered(given: tuple[str, ...], path, own: tuple[str, ...], where: str) -> None:
    """A ContractError when the labels file `path` (None: labels given by name) names the model's own labels (`own`,
    read from `where`) in another order: exported so, every answer was named wrongly and parity passed (Keras accuracy
    0.136 by those names, the file's as low, so no change); `tledge run` printed them with exit 0. Names compare as
    `match_labels` does (case, spaces, Unicode form aside)."""
    i = reordered_at(given, own)
    if i is None:
        return
    what = f"--labels {path}" if path is not None else "the labels given"
    raise ContractError(f"{what} names the {len(own)} labels of {where} in another order (line {i + 1}: "
                        f"{given[i]!r}, where {where} has {own[i]!r}): the model's outputs are in {where}'s order, so "
                        f"every answer would be named wrongly; drop --labels, or correct {where} if it is the wrong one")


def match_labels(folders: list[str], labels: tuple[str, ...], *, where: Path | str = "") -> dict[str, int]:
    """Folder name -> index in `labels`: exact name first, then case/space/underscore-insensitive, then
    also ignoring a leading number ('000_tench' ~ 'tench' ~ '0 tench'). Every folder must match one
    label and no two folders the same one; a DataError names the folders that do not."""
    out: dict[str, int] = {}
    exact: dict[str, int] = {}
    for i, n in enumerate(labels):
        exact[n] = -1 if n in exact else i  # two classes of one name (ImageNet's crane): never matched by name
    keyed = [_keyed(labels, drop_index=d) for d in (False, True)]
    missing, ambiguous = [], []
    for name in folders:
        i = exact.get(name)
        for table, drop in zip(keyed, (False, True)):
            if i is None:
                i = table.get(label_key(name, drop_index=drop))
        if i is not None and i < 0:
            i = _by_index(name, labels)
        if i is None:
            missing.append(name)
        elif i < 0:
            ambiguous.append(name)
        else:
            out[name] = i
    if missing:  # before the ambiguous ones: a shifted labels file (a 'background' line) makes both, and this is why
        raise DataError(f"class folder(s) {_few(missing)}{_in(where)} match none of the model's {len(labels)} "
                        f"labels ({_few(list(labels))}){_hint(missing, labels)}")
    if ambiguous:  # the later class used to win: crane photos scored as the machine
        raise DataError(_ambiguous(ambiguous, labels, where, folders))
    seen = Counter(out.values())  # (list.count per folder: 16 s for 21,843 folders, twice an export)
    clash = {i for i, n in seen.items() if n > 1}
    if clash:
        both = sorted(n for n, i in out.items() if i in clash)
        raise DataError(f"class folders {_few(both)}{_in(where)} map to the same label {labels[min(clash)]!r}")
    return out


def _ambiguous(ambiguous: list[str], labels: tuple[str, ...], where, folders: list[str]) -> str:
    """Folders naming a label two classes share ('crane'): put the class index in front, unless most numbered folders
    find their label one line off their number (`_shifted`: a labels file with a 'background' line told '134_crane'
    to become '135_crane'). A folder numbered its own way gets the rename advice."""
    key = label_key(ambiguous[0], drop_index=True)
    idx = [i for i, n in enumerate(labels) if label_key(n, drop_index=True) == key][:3]
    shift = _shifted(folders, labels)
    named = " or ".join(f"{i}_{key}".replace(" ", "_") for i in idx[:2])
    head = (f"class folder(s) {_few(ambiguous)}{_in(where)} name more than one of the model's labels (classes "
            f"{', '.join(map(str, idx))})")
    if shift > 0:
        return (f"{head}, and most numbered folders find their label one line after their number: is the labels "
                "file in the model's output order (one label per output, no 'background' line)?")
    if shift < 0:  # numbered from 1: each folder's own index from 0, not either crane
        m = re.match(r"\s*(\d+)(.*)", ambiguous[0], re.S)
        own = f"{int(m.group(1)) - 1}{m.group(2)}" if m else named
        return (f"{head}, and most numbered folders find their label one line before their number: are the folders "
                f"numbered from 1? Number them from 0, the model's class index ({ambiguous[0]!r} -> {own!r})")
    return f"{head}: put the class index in front of the name ({named})"


def _shifted(folders: list[str], labels: tuple[str, ...]) -> int:
    """+1 or -1 when more than half of the numbered folders (at least 2) have their label one line after (before)
    their number in `labels` and not at it, else 0."""
    numbered = [(int(m.group(1)), label_key(f, drop_index=True)) for f in folders
                if (m := re.match(r"\s*(\d+)[\s_\-]+", f))]

    def at(i: int, key: str) -> bool:
        return 0 <= i < len(labels) and label_key(labels[i], drop_index=True) == key

    for d in (1, -1):
        off = sum(at(n + d, k) and not at(n, k) for n, k in numbered)
        if off >= 2 and off > len(numbered) / 2:
            return d
    return 0


def _by_index(name: str, labels: tuple[str, ...]) -> int:
    """A folder '134_crane' where the labels name two classes 'crane': class 134 when its label is that name, else -1."""
    m = re.match(r"\s*(\d+)[\s_\-]+", name)
    i = int(m.group(1)) if m else -1
    return i if 0 <= i < len(labels) and label_key(labels[i], drop_index=True) == label_key(name, drop_index=True) \
        else -1


def _keyed(labels: tuple[str, ...], *, drop_index: bool) -> dict[str, int]:
    """Normalised label -> index; -1 where two labels share a key (ambiguous: never matched)."""
    table: dict[str, int] = {}
    for i, n in enumerate(labels):
        k = label_key(n, drop_index=drop_index)
        table[k] = -1 if k in table else i
    return table


def _in(where) -> str:
    return f" in {where}" if str(where) else ""


def _few(names: list[str], n: int = 4) -> str:
    return ", ".join(repr(x) for x in names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _hint(names: list[str], labels: tuple[str, ...]) -> str:
    import difflib

    keys = [label_key(x, drop_index=True) for x in labels]
    for name in names[:20]:
        close = difflib.get_close_matches(label_key(name, drop_index=True), keys, n=1)
        if close:
            return f"; closest to {name!r}: {labels[keys.index(close[0])]!r}"
    return ""

"""Which profile is this machine? Read from files only, under a root folder (tests pass a fake one).

Evidence, in order: /proc/device-tree/model (Raspberry Pi, Jetson), /etc/nv_tegra_release (L4T
release: R32 = JetPack 4 = Nano era, R35/R36 = JetPack 5/6 = Orin), /proc/cpuinfo (Model line,
CPU part, core count), the machine architecture (`uname -m`: an argument, else
<root>/proc/sys/kernel/arch, else platform.machine() on the real root; a 64-bit kernel over a 32-bit
userland, by the ELF class of <root>/bin/sh, counts as 32-bit ARM), and USB devices
(/sys/bus/usb/devices/*/idVendor + idProduct: a Coral USB Accelerator is 1a6e:089a before its
firmware is loaded and 18d1:9302 after).
"""
from __future__ import annotations

import platform
import re
from dataclasses import dataclass
from pathlib import Path

from tledge.devices.profiles import Profile, get_profile

CORAL_USB_IDS = {
    ("1a6e", "089a"): "Coral USB Accelerator (Global Unichip, firmware not loaded yet)",
    ("18d1", "9302"): "Coral USB Accelerator (Google, firmware loaded)",
}
_ARM_PARTS = {"0xd03": "Cortex-A53", "0xd07": "Cortex-A57", "0xd08": "Cortex-A72", "0xd0b": "Cortex-A76",
              "0xd42": "Cortex-A78AE", "0xd41": "Cortex-A78"}
_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "armv8l": "armv7l"}


@dataclass(frozen=True)
class Evidence:
    source: str  # the file (relative to the root) or "uname -m"
    value: str
    meaning: str

    def __str__(self) -> str:
        return f"{self.source}: {self.value!r} -> {self.meaning}"

    def to_dict(self) -> dict:
        return {"source": self.source, "value": self.value, "meaning": self.meaning}


@dataclass(frozen=True)
class Detection:
    profile: Profile
    evidence: tuple[Evidence, ...]
    host: str  # the host board's profile name (differs from profile.name when an accelerator is plugged in)
    arch: str
    confident: bool  # False when nothing identified the board and the architecture decided
    why: str = ""  # what makes it a guess (empty when confident)

    def to_dict(self) -> dict:
        return {"device": self.profile.name, "title": self.profile.title, "host": self.host,
                "arch": self.arch, "confident": self.confident, "why": self.why,
                "evidence": [e.to_dict() for e in self.evidence]}


def _read(root: Path, rel: str, limit: int = 1 << 16) -> str | None:
    try:
        with open(root / rel, "rb") as fh:
            data = fh.read(limit)
    except OSError:
        return None
    return data.replace(b"\x00", b"\n").decode("utf-8", "replace").strip()


def _machine(root: Path, machine: str | None, ev: list[Evidence]) -> str:
    if machine:
        source, value = "uname -m", machine
    elif (text := _read(root, "proc/sys/kernel/arch")) is not None:
        source, value = "proc/sys/kernel/arch", text
    elif root.resolve() == Path("/"):
        source, value = "uname -m", platform.machine()
    else:
        return "unknown"
    arch = _ARCH_ALIASES.get(value.strip().lower(), value.strip().lower())
    if arch == "aarch64" and _userland_bits(root, ev) == 32:  # Pi OS 32-bit boots a 64-bit kernel on a Pi 4/5
        arch = "armv7l"
    meaning = {"x86_64": "64-bit x86", "aarch64": "64-bit ARM"}.get(
        arch, "32-bit ARM userland: PyPI has no ai-edge-litert/onnxruntime wheels for it" if arch.startswith("arm")
        else "architecture without a profile")
    ev.append(Evidence(source, value, meaning))
    return arch


def _board_from_model(model: str) -> str | None:
    m = model.lower()
    if "raspberry pi" in m:
        if "raspberry pi 5" in m or "compute module 5" in m:
            return "rpi5"
        if "zero 2" in m:
            return "rpi-zero2w"
        if "raspberry pi 4" in m or "raspberry pi 400" in m or "compute module 4" in m:
            return "rpi4"
        return None
    if "jetson" in m or "nvidia" in m:
        if "orin" in m:
            return "jetson-orin"
        if "nano" in m:
            return "jetson-nano"
    return None


def _tegra(root: Path, ev: list[Evidence]) -> tuple[str, int | None] | None:
    text = _read(root, "etc/nv_tegra_release", 4096)
    if text is None:
        return None
    first = text.splitlines()[0] if text else ""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", first)
    board = re.search(r"BOARD:\s*([\w-]+)", first)
    if not m:
        ev.append(Evidence("etc/nv_tegra_release", first, "a Jetson (L4T release unreadable)"))
        return "jetson-orin", None
    release = int(m.group(1))
    name = "jetson-nano" if release <= 32 else "jetson-orin"
    jp = {32: "JetPack 4", 34: "JetPack 5 (developer preview)", 35: "JetPack 5", 36: "JetPack 6"}.get(release, "JetPack")
    extra = f", board {board.group(1)}" if board else ""
    ev.append(Evidence("etc/nv_tegra_release", first, f"L4T R{release}.{m.group(2)} = {jp}{extra} -> {name}"))
    return name, release


def _cpuinfo(root: Path, ev: list[Evidence]) -> tuple[str | None, int | None]:
    text = _read(root, "proc/cpuinfo", 1 << 20)
    if text is None:
        return None, None
    model = re.search(r"^Model\s*:\s*(.+)$", text, re.M)
    cores = len(re.findall(r"^processor\s*:", text, re.M)) or None
    parts = sorted(set(re.findall(r"^CPU part\s*:\s*(0x[0-9a-f]+)", text, re.M | re.I)))
    names = ", ".join(_ARM_PARTS.get(p.lower(), p) for p in parts)
    if model:
        ev.append(Evidence("proc/cpuinfo", model.group(1).strip(), f"board model ({cores} cores{', ' + names if names else ''})"))
        return model.group(1).strip(), cores
    if names or cores:
        ev.append(Evidence("proc/cpuinfo", names or f"{cores} processors", f"{cores} cores"))
    return None, cores


def usb_ids(root: "str | Path" = "/") -> list[tuple[str, str, str]]:
    """(device folder, idVendor, idProduct) of every USB device under <root>/sys/bus/usb/devices."""
    base = Path(root) / "sys/bus/usb/devices"
    found = []
    for vid_file in sorted(base.glob("*/idVendor")):
        vid = _read(vid_file.parent, "idVendor", 64)
        pid = _read(vid_file.parent, "idProduct", 64)
        if vid and pid:
            found.append((vid_file.parent.name, vid.lower(), pid.lower()))
    return found


def _coral(root: Path, ev: list[Evidence]) -> bool:
    hit = False
    for dev, vid, pid in usb_ids(root):
        what = CORAL_USB_IDS.get((vid, pid))
        if what:
            ev.append(Evidence(f"sys/bus/usb/devices/{dev}", f"{vid}:{pid}", what))
            hit = True
    return hit


_GENERIC = "no known board identified: the generic profile for the architecture"
_JETPACK5 = ("JetPack 5 (Python 3.8, below tledge's 3.10): the profile's install is JetPack 6's; install Python 3.11 "
             "with pyenv as the jetson-nano profile does, or move to JetPack 6")
_BITS32 = ("a 32-bit userland (armv7l): the profile's install is for the 64-bit OS, on which PyPI has the wheels; "
           "see its notes for the 32-bit fallback")


def _host(model_name: str | None, tegra: tuple[str, int | None] | None, cpu_model: str | None,
          arch: str) -> tuple[str, str]:
    """(profile, why it is a guess: "" when confident). A board's profile is a guess where the evidence says it is
    not quite that board: a 32-bit userland under a 64-bit OS profile, a Jetson that is neither a Nano nor an Orin
    (Xavier, TX2), an Orin on JetPack 5 (Python 3.8: the profile's install is JetPack 6's)."""
    jetpack5 = tegra is not None and tegra[1] is not None and 32 < tegra[1] < 36
    for text in (model_name, cpu_model):
        board = _board_from_model(text) if text else None
        if board:
            return board, _BITS32 if arch.startswith("arm") and arch != "aarch64" else \
                _JETPACK5 if board == "jetson-orin" and jetpack5 else ""
    if tegra:
        if model_name and "jetson" in model_name.lower() and not any(k in model_name.lower() for k in ("orin", "nano")):
            return tegra[0], "a Jetson that is neither a Nano nor an Orin: the nearest profile"
        return tegra[0], _JETPACK5 if tegra[0] == "jetson-orin" and jetpack5 else ""
    if any(t and "raspberry pi" in t.lower() for t in (model_name, cpu_model)):
        return "arm64-generic", "a Raspberry Pi without a profile of its own (Pi 3, Zero W): " + _GENERIC
    if arch == "x86_64":
        return "x86-cpu", ""
    if arch.startswith("arm") or arch == "aarch64":
        if arch != "aarch64":
            return "arm64-generic", _BITS32
        # a board that names itself (device tree) but has no profile (Coral Dev Board, Rock, Orange Pi): its OS and
        # Python may be older than the generic profile assumes (Mendel: 3.7)
        return "arm64-generic", f"a board without a profile of its own ({model_name.strip()}): " + _GENERIC \
            if model_name and model_name.strip() else ""
    return "x86-cpu", (f"no profile is for {arch or 'this architecture'} (the profiles are x86-64 and ARM boards): "
                       "x86-cpu's settings are only the nearest, and PyPI may have no LiteRT or onnxruntime wheels "
                       "for it")


def _userland_bits(root: Path, ev: list[Evidence]) -> int | None:
    """32 or 64: the ELF class of the root's shell (the kernel's architecture says nothing about the userland:
    32-bit Pi OS runs a 64-bit kernel on a Pi 4 and 5), else this Python's pointer size on the real root."""
    for rel in ("bin/sh", "usr/bin/env"):
        try:
            with open(root / rel, "rb") as fh:
                head = fh.read(5)
        except OSError:
            continue
        if head[:4] == b"\x7fELF" and head[4:5] in (b"\x01", b"\x02"):
            bits = 32 if head[4:5] == b"\x01" else 64
            if bits == 32:
                ev.append(Evidence(f"ELF class of {rel}", "32-bit", "a 32-bit userland on a 64-bit kernel"))
            return bits
    if root.resolve() == Path("/"):
        import struct

        return 8 * struct.calcsize("P")
    return None


def detect(root: "str | Path" = "/", machine: str | None = None) -> Detection:
    """The profile of the machine whose files are under `root`, and the evidence for it."""
    r = Path(root)
    ev: list[Evidence] = []
    model = _read(r, "proc/device-tree/model", 4096)
    if model:
        model = model.splitlines()[0].strip()
        board = _board_from_model(model)
        ev.append(Evidence("proc/device-tree/model", model, f"board -> {board}" if board else "board without a profile"))
    tegra = _tegra(r, ev)
    cpu_model, _cores = _cpuinfo(r, ev)
    arch = _machine(r, machine, ev)
    host, why = _host(model, tegra, cpu_model, arch)
    if not ev:
        ev.append(Evidence(str(r), "", "no evidence found; assuming an x86-64 CPU"))
    name = "coral-usb" if _coral(r, ev) else host
    if why:  # (a Coral on such a host is as much a guess: its install is the host's)
        ev.append(Evidence("decision", host, why))
    return Detection(get_profile(name), tuple(ev), host, arch, not why, why)

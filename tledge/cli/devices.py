"""`tledge devices [list|show NAME|detect] [--json]`: device profiles and which one this machine is."""
from __future__ import annotations

import argparse
import json
import textwrap


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    p = sub.add_parser("list", help="list the profiles (the default)")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    p = sub.add_parser("show", help="print one profile: targets, runtime and export options, install, limits")
    p.add_argument("name", help="profile name (see `tledge devices`)")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    p = sub.add_parser("detect", help="say which profile this machine is, with the evidence")
    p.add_argument("--root", default="/", help="read /proc, /etc and /sys under this folder (default /)")
    p.add_argument("--machine", default=None, help="architecture as `uname -m` prints it (default: read it)")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    # the actions' own --json must not reset the verb's: `tledge devices --json show rpi4` is JSON too
    parser.add_argument("--json", action="store_true", help="print JSON (with no ACTION: the list)")
    from tledge.cli import verbosity_arguments

    for action in sub.choices.values():  # -q / -v after the action too, as after every other verb
        verbosity_arguments(action, top=False)


def run(args) -> int:
    action = getattr(args, "action", None) or "list"
    return {"list": _list, "show": _show, "detect": _detect}[action](args)


def _list(args) -> int:
    from tledge.devices import PROFILES

    if args.json:
        print(json.dumps([p.to_dict() for p in PROFILES.values()], indent=2))
        return 0
    rows = [(p.name, p.arch.value, str(p.cores or "-"),
             f"{p.best.format.value} {p.best.precision.value} ({p.best.accel.value})", p.title)
            for p in PROFILES.values()]
    head = ("NAME", "ARCH", "CORES", "BEST", "BOARD")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(4)]
    for r in [head] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[4])
    print("\n`tledge devices show NAME` for details; `tledge devices detect` for this machine.")
    return 0


def _show(args) -> int:
    from tledge.devices import get_profile, resolve

    prof = get_profile(args.name)
    opts = resolve(prof)
    if args.json:
        print(json.dumps({**prof.to_dict(), "options": opts.to_dict()}, indent=2))
        return 0
    print(f"{prof.name}: {prof.title}")
    print(f"  arch {prof.arch.value}, cores {prof.cores or 'host'}, threads {prof.threads or 'default (<= 4)'}"
          + (f", {prof.memory_mb} MB RAM" if prof.memory_mb else ""))
    print(f"  OS assumed: {prof.os}")
    print("  model files, best first:")
    for i, t in enumerate(prof.targets, 1):
        how = ", ".join(p.name for p in t.providers) or ", ".join(t.delegates) or t.accel.value
        print(f"    {i}. {t.filename:28} {how}")
        print(textwrap.fill(t.why, 96, initial_indent=" " * 7, subsequent_indent=" " * 7))
    print(f"  runtime: backend={opts.backend} precision={opts.precision} threads={opts.threads} "
          f"delegates={list(opts.delegates)}")
    for p in opts.providers:
        print(f"    provider {p if isinstance(p, str) else p[0]}" + ("" if isinstance(p, str) else f" {p[1]}"))
    print(f"  export: {', '.join(f'{f} {p}' for f, p in opts.pairs)}"
          + (" (+ edgetpu_compiler on the int8 file)" if opts.compile_edgetpu else ""))
    print("  install:")
    for line in prof.install:
        print(f"    {line}")
    print(textwrap.fill(f"camera: {prof.camera}", 100, initial_indent="  ", subsequent_indent="    "))
    print("  known limits:")
    for n in prof.notes:
        print(textwrap.fill(n, 100, initial_indent="    - ", subsequent_indent="      "))
    return 0


def _detect(args) -> int:
    from tledge.cli.validate import input_dir
    from tledge.devices import detect

    input_dir(args.root, "--root")
    det = detect(args.root, machine=args.machine)
    if args.json:
        print(json.dumps(det.to_dict(), indent=2))
        return 0
    sure = "" if det.confident else f" (a guess: {det.why})"
    host = f" on a {det.host} host" if det.host != det.profile.name else ""
    print(f"{det.profile.name}{host}{sure}: {det.profile.title}")
    for e in det.evidence:
        print(f"  - {e}")
    print(f"`tledge devices show {det.profile.name}` for what to install and which file to use.")
    return 0

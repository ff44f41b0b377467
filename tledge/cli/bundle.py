"""`tledge bundle EXPORT_DIR --device NAME [--out FILE]`: one .tar.gz to copy to a board."""
from __future__ import annotations

import json


def add_arguments(parser) -> None:
    from tledge.artifacts import KINDS, PRECISIONS
    from tledge.devices.profiles import profile_names

    parser.add_argument("export_dir", metavar="EXPORT_DIR", help="folder written by `tledge export`")
    parser.add_argument("--device", required=True, metavar="NAME",
                        help=f"device profile: {', '.join(profile_names())}, or auto (this machine)")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="output .tar.gz (default ./<export>-<device>.tar.gz)")
    parser.add_argument("--format", dest="backend", choices=KINDS, default=None,
                        help="use this format instead of the profile's preference")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="use this precision instead of the profile's preference")
    parser.add_argument("--threads", type=int, default=None, help="threads recorded for the board")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args) -> int:
    from tledge.cli import validate as V
    from tledge.runtime.backends import MAX_THREADS
    from tledge.devices.bundle import make_bundle
    from tledge.devices.options import device_from_args

    V.input_dir(args.export_dir, "EXPORT_DIR")
    if args.out:
        V.output_file(args.out, "--out", suffixes=(".tar.gz", ".tgz"))
    V.in_range(args.threads, "--threads", 1, MAX_THREADS)
    profile = device_from_args(args)
    res = make_bundle(args.export_dir, profile, args.out, backend=args.backend,
                      precision=args.precision, threads=args.threads)
    if args.json:
        print(json.dumps({"path": str(res.path), "top": res.top, "device": res.device, "model": res.model,
                          "fallback": res.fallback, "options": res.options.to_dict(),
                          "notes": list(res.notes), "members": list(res.members)}, indent=2))
        return 0
    size = res.path.stat().st_size / 2**20
    print(f"wrote {res.path} ({size:.1f} MiB) for {res.device}: model/{res.model}"
          + (f" (CPU fallback model/{res.fallback})" if res.fallback else ""))
    for n in res.notes:
        print(f"  note: {n}")
    from shlex import quote

    print(f"on the board: tar xzf {quote(res.path.name)} && cd {quote(str(res.top))} && cat README.md")
    return 0

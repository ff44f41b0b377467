import sys

try:  # a Ctrl-C while tledge imports, before main() has its handlers: one line and 130, not a traceback
    from tledge.cli import main
except KeyboardInterrupt:
    print("tledge: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())

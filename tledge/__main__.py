import sys

from tledge.cli import main

sys.exit(main())

import sys

from depgate.cli import main

sys.exit(main())

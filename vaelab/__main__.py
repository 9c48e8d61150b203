import sys

from vaelab.cli import main

sys.exit(main())

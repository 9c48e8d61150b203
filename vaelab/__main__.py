import sys

from vaelab.cli import main

if __name__ == "__main__":  # `python -m vaelab`; importing this module runs nothing
    sys.exit(main())

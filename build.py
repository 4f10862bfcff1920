#!/usr/bin/env python3
"""ktappliance: build and run KTransformers appliances. See README.md or --help."""

import sys

from ktappliance.cli import main

if __name__ == "__main__":
    sys.exit(main())

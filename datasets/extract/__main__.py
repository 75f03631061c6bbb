"""`python -m datasets.extract ...`: run the extraction command line."""

import sys

from datasets.extract.cli import main

sys.exit(main())

"""`python -m bench` (what `make bench` runs): the benchmark report, bench/report.py."""

import sys

from bench.report import main

sys.exit(main())

"""``python -m conformance.bench``: the benchmark without the ``conformance`` dispatcher."""

import sys

from conformance.bench.cli import main

sys.exit(main())

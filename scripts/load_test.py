"""Load test of `hybrid-retrieval serve` on 127.0.0.1: latency and queries/s at 1, 8 and 32 clients
on a 10,000-item index, with and without batching, and the server's memory over 2 minutes.

    python scripts/load_test.py                         # results in results/load_test/
    python scripts/load_test.py --seconds 5 --memory-seconds 20 --items 2000   # a quick look

What is measured and how: hybrid_retrieval.experiments.serve_load.
"""
from __future__ import annotations

import sys

from hybrid_retrieval.errors import run_reporting_errors
from hybrid_retrieval.experiments.serve_load import run_load_test

if __name__ == "__main__":
    sys.exit(run_reporting_errors(run_load_test))

#!/usr/bin/env python
"""RIDE training/evaluation throughput benchmark; same as ``ride bench`` (see ride/bench.py).

    python benchmarks/bench_slstm.py --quick
    python benchmarks/bench_slstm.py --json bench.json
    python benchmarks/bench_slstm.py --eval
"""
import sys

from ride.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

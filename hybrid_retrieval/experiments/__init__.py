"""Experiments: the named configs and how they compose, and the benchmarks built from them.

    config.py            load_named, compose, register_named_configs (the YAML files of configs/)
    retrieval_table.py   the hybrid-retrieval table (scripts/benchmark.py)
    speed.py             the speed and memory benchmarks (scripts/bench.py)

The disentangled-similarity table lives with its subsystem (hybrid_retrieval.disentangled.benchmark)
and reads its configs through config.py too.
"""

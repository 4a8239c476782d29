"""The benchmark engine behind ``pnasnet bench`` and ``benchmarks/bench.py``: the driver (:mod:`.run`),
worker processes (:mod:`.worker`), contenders, ceilings, machine load, reports and the agreement check.
It may import inference/, api, weights/ and below; nothing in the library's inference path imports it.
"""

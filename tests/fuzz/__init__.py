"""Fuzzing a serving node: hypothesis strategies, the properties every input must satisfy, and
bounded runs that are part of ``make test`` (longer runs: ``python -m bench.fuzz``)."""

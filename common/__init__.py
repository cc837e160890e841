"""What every part of the platform shares and nothing else: the error base and the AIF_* variables.

A leaf package: it imports nothing of `aifactory`, so hub, benchmarks, extensions and images can
all depend on it without depending on each other.
"""

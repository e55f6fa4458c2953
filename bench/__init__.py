"""Benchmarks of paracle-nb against the commands the guide uses for the same job.

``python -m bench.run`` (``make bench``) runs them all; each measures ours
and its baseline side by side, in turns, in the same run.
"""

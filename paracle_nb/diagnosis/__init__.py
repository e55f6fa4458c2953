"""Diagnoses: pure functions from the evidence read to a list of findings.

Each takes what the runbook's steps returned (possibly
:class:`~paracle_nb.runbook.Unavailable`) and returns findings with the
values that prove them. No I/O here, so every rule has a unit test.
"""

"""Scores: the scorers, which one a run uses, their feature networks, the cached real-data
references and the yardsticks that say what a score means.
"""

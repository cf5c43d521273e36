"""The cell process: its entry point and driver, checkpoints, results, history, the kept log,
metrics and the peers it pulls from.
"""

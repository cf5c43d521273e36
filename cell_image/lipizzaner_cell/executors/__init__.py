"""Where a run's cells run: in this process, or as local processes; with the progress display,
the output's lease and the signals that stop a run.
"""

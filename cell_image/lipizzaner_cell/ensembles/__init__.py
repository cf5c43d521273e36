"""Ensembles once a run is done: samples drawn from one, and the search for a better one over
every generator of the grid.
"""

"""Datasets: what a run trains and scores on, each an object that knows its shape and how to
load.
"""

"""The algorithm: individuals, networks and losses, fitness, selection, training, the mixture
ES, the neighbourhood, and the engine that runs a generation.
"""

"""Lipizzaner for Kubernetes: spec, topology, ensemble assembly, CLI (all torch-free)."""

__version__ = "0.1.0"

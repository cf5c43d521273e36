"""Lipizzaner for Kubernetes, the part both sides share (torch-free): the run spec and its
CRD, grid topology, storage and the run's layout, the cell contract, the ensemble manifest,
the restart policy, and the gRPC wire contract."""

__version__ = "0.1.0"

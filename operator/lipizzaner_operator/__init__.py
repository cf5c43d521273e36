"""Lipizzaner for Kubernetes: the kopf operator (torch-free; depends on lipizzaner_core only)."""

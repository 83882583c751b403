"""Datasets and synthetic task generators."""

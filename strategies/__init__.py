"""Aggregation rules (Flower strategies) and the shared mechanics they stand on."""

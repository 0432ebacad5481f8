"""Deployment (SuperLink + SuperNodes) vs simulation latency benchmark (issue 6)."""

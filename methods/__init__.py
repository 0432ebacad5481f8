"""The algorithms: each a ``Method`` pairing an aggregation rule with a local solver, its
hyper-parameters and personalization modes (``methods.registry``), and every run-config key
declared once (``methods.hyper``).
"""

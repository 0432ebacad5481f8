"""Framework-overhead benchmark: dualflower vs Flower's stock FedAvg vs a plain PyTorch loop.

Entry point: ``python -m benchmarks.overhead.run`` (see ``benchmarks/README.md``, "overhead").
"""

"""The numerical core of federated learning: models, training, robust aggregation.

Pure functions over numpy arrays, deterministic to the bit: fixed-point
updates, exact integer kernels in Numba, ties broken by client id.
"""

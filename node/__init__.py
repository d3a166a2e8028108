"""The bcfl validator process: codec, keys, store, ledger, mempool, transport, API, CLI.

``node`` is the only package that does I/O. It drives the pure PBFT core in
``consensus`` and calls the numerical core in ``fl``; neither of them imports
``node``.
"""

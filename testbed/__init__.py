"""What the tests and the benchmarks both stand up: a test PKI (:mod:`testbed.pki`) and a
real DIRAC server on loopback (:mod:`testbed.dirac_server`). Nothing here imports from
``tests/``, so benchmarks never depend on test modules.
"""

"""The grid: credentials a worker node holds and the X.509 structures behind them.

Owns discovery of the proxy, CA locations and bearer tokens without X.509 parsing
(:mod:`.gridenv`), the DER reader/writer, proxy chains and VOMS attributes
(:mod:`.voms`), and loading, validating and using credentials for TLS (:mod:`.credentials`).
It may import ``pilot.errors`` only, so that every other stage can use it.
"""

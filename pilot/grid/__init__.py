"""The grid: credentials a worker node holds and the X.509 structures behind them.

Owns discovery of the proxy, CA locations and bearer tokens without X.509 parsing
(:mod:`.gridenv`), the DER reader/writer, proxy chains and VOMS attributes
(:mod:`.voms`), loading, validating and using credentials for TLS
(:mod:`.credentials`), and deciding once per pilot which proxy, CAs and token are meant
and what payloads must not read (:mod:`.resolve`).
It may import ``pilot.errors`` only, so that every other stage can use it.
"""

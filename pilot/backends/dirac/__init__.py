"""DIRAC backend: the pilot speaks DIRAC's DISET protocol (``dips://``) itself.

:mod:`pilot.backends.dirac.diset` is the transport (framing, JSON encoding, TLS with the pilot's
proxy, RPC and file transfers); :mod:`pilot.backends.dirac.backend` maps the agent's
:class:`pilot.backends.base.Backend` calls onto the WMS services (Matcher, JobStateUpdate,
SandboxStore, PilotManager). DIRAC itself is never imported.
"""

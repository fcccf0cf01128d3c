"""The job: one matched job from its description to its final status.

Owns the job description language and its parametric expansion (:mod:`.jdl`,
:mod:`.jdl_expand`), stage-in and stage-out (:mod:`.sandbox`), safe unpacking
(:mod:`.archive`) and packing (:mod:`.outpack`) of sandboxes with the file-system safety
both need (:mod:`.fssafe`), running the payload (:mod:`.execute`) under the watchdog (the
process table and reaping in :mod:`.proctable`, the limits and every "Job exceeded"
message in :mod:`.limits`, the heartbeat in :mod:`.heartbeat`) inside its isolation
(:mod:`.isolation`) with its delegated proxy (:mod:`.delegation`) and bearer token
(:mod:`.bearer`), the guardian process
that ends a dead pilot's payloads (:mod:`.guardian`), and the sequence of
all of these for one job (:mod:`.jobrun`). It may import ``pilot.errors``,
``pilot.config``, ``pilot.proc``, ``pilot.cgroups``, ``pilot.grid`` and, from the
backends, only the seam :mod:`pilot.backends.base`; it never imports the node stage, a
concrete backend, the agent or the CLI.
"""

"""The job: one matched job from its description to its final status.

Owns the job description language and its parametric expansion (:mod:`.jdl`,
:mod:`.jdl_expand`), stage-in and stage-out (:mod:`.sandbox`), safe unpacking
(:mod:`.archive`) and packing (:mod:`.outpack`) of sandboxes, running the payload
(:mod:`.execute`) under the watchdog (:mod:`.watchdog`) inside its isolation
(:mod:`.isolation`), and the sequence of all of these for one job (:mod:`.jobrun`). It may
import ``pilot.errors``, ``pilot.proc``, ``pilot.grid`` and, from the backends, only the
seam :mod:`pilot.backends.base`; it never imports the node stage, a concrete backend,
the agent or the CLI.
"""

"""The backends: whatever hands out jobs, behind one seam.

Owns the :class:`~pilot.backends.base.Backend` protocol and the values that cross it
(:mod:`.base`, which imports nothing from the pilot), and its implementations: the
matcher stub's REST client (:mod:`.stub`), DIRAC's DISET services (:mod:`.dirac`) and
local mode (:mod:`.local`); choosing one from the configuration (:mod:`.factory`) and
the journaled, retried delivery of each job's reports in front of any of them
(:mod:`.outbox`). Implementations may import ``pilot.errors``, ``pilot.config``,
``pilot.grid`` and, from the job stage, the description and packing modules
(:mod:`pilot.job.jdl`, :mod:`pilot.job.archive`, :mod:`pilot.job.outpack`); never the node
stage, the agent or the CLI.
"""

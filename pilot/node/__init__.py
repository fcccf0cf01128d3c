"""The node: what this worker node and its batch slot offer, before any job is matched.

Owns slot detection (:mod:`.batch`, with the per-system parsers in :mod:`.batch_systems`),
discovering and running the environment checks (:mod:`.checking`, with plugin discovery in
:mod:`.entrypoints`) and turning their facts, the slot and the configuration into the
resource description sent to the matcher (:mod:`.resources`), and the slot's bookkeeping
while jobs run (:mod:`.slot`). It may import ``pilot.errors``, ``pilot.config``,
``pilot.proc``, ``pilot.cgroups`` and ``pilot.api``; it knows nothing of jobs, backends or
grid credentials.
"""

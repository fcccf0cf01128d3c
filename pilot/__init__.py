"""pilot-agent: the pilot that a grid workload manager sends to worker nodes."""

__version__ = "0.1.0"

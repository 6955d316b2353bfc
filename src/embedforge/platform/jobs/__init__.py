"""Jobs: database rows with a status, run by the runner as worker processes (customization, evaluation)
or child servers (deployments)."""

from embedforge.platform.jobs import customization, store

__all__ = ["customization", "store"]

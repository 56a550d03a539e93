"""The mirror worker: scheduler, claim, sync run, record."""

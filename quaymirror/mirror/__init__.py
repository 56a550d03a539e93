"""Repository mirroring: configuration, API and the worker."""

"""quaymirror: a repository-mirroring service that speaks Quay's mirror REST API."""

__version__ = "0.1.0"

"""Repositories, their state and their permissions."""

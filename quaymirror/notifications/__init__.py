"""Repository notifications: Quay's notification API for the three mirror events, and their delivery from an outbox."""

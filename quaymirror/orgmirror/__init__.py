"""Organization mirroring: one configuration on an organization mirrors every repository of an upstream namespace."""

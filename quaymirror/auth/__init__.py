"""Bearer tokens, scopes and the permission rules of Quay."""

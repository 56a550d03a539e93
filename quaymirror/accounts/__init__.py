"""Users, organizations and robot accounts."""

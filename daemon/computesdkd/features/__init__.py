"""Features built on the core (pools, groups, networks, channels, snapshots, volumes,
templates, clone and migrate, monitoring). Each is given the core services it needs;
none imports another."""

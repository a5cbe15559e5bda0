"""Linux mechanics of corral: images and root filesystems, cgroups, namespaces
and the container init. Synchronous code only; the daemon drives it."""

"""Prometheus exposition of corral's containers, read from cgroup files at
scrape time. Imports runtime only; the daemon hands in a read-only view."""

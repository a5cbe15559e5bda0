"""Prometheus exposition of corral's containers and of corrald itself, read
from cgroup files at scrape time: collector (per-container series), daemon
(API request durations, event-loop lag), exporter (the whole exposition).
Imports runtime only; the daemon hands in a read-only view."""

"""Prometheus text exposition, read back for assertions."""

from prometheus_client.parser import text_string_to_metric_families


def parse(text: str) -> dict:
    """{(sample name, frozenset of labels): value}; fails on a duplicate."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in found, f"duplicate series {key}"
            found[key] = sample.value
    return found

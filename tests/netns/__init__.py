"""Impaired links: loss, bandwidth and blackholes in network namespaces; latency by proxy."""

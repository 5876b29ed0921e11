"""muxtunnel: a reverse tunnel for TCP and UDP over one multiplexed connection."""

__version__ = "0.1.0"

"""mux: a yamux-compatible stream multiplexer (sans-IO core plus an anyio adapter)."""

"""The REST + WebSocket API and the agent panel."""

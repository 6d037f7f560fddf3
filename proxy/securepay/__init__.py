"""Secure-pay sessions: turn a caller's masked digits into a payment token."""

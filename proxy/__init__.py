"""The ToneGuard service: media relay, DTMF masking, secure-pay, control plane."""

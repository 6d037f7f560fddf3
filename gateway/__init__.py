"""The tokenising payment gateway stub: a separate HTTPS service with mutual TLS.

In a deployment this is the PSP, outside the proxy. It depends on neither ``proxy`` nor ``dsp``.
"""

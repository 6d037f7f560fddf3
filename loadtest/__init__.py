"""Load, conformance and leak tooling: call simulator, Q.24 procedure, peers, benchmarks."""

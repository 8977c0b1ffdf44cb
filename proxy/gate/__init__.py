"""The fit gate: the service with I/O around a pure decision, its explanation, reservations and audit."""

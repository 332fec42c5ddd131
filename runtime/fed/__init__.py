"""Logical clients: many clients per client rank, the seeded sample of each round, and how the
clients a rank hosts meet in one aggregation collective (docs/clients.md)."""

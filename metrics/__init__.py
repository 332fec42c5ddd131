"""E2E NLG metrics as the official scorer computes them. Stands alone (no torch)."""

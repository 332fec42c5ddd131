"""Roles, RPC, process groups, aggregation, data and config: everything that runs."""

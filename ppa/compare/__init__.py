"""Federated against centralised training at equal epochs: plans, results, the table."""

"""E2E NLG data: reading, converting, tokenising, partitioning, synthetic default."""

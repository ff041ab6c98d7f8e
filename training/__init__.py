"""Learns a u2qt tokenizer from event logs and exports it (needs the `train` extra: torch etc.)."""

"""Reliability and security suite: leaks, faults, hostile peers, signals and load."""

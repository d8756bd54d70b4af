"""Verification: exported artifacts checked against the unmerged model."""

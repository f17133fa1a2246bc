"""Helpers shared by every test folder (unit, contract, real-broker and fault tests)."""

"""Tests against a real Redis server started by the test harness (tests/harness/redis.py)."""

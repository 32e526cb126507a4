"""Local servers that stand in for external services in tests."""

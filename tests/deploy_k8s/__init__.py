"""Kubernetes deploy target against an emulated API server."""

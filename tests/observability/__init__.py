"""Tests for logging, redaction, metrics, DORA, the Datadog client and chat notifications."""

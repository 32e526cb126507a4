"""Tests for logging, redaction, metrics, DORA and the Datadog and PagerDuty clients."""

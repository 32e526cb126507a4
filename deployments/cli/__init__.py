"""The `gantry` command line (entry point: ``deployments.cli.main:main``)."""

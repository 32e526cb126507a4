"""`make bench`: Gantry's speed, each figure measured beside its reference in the same run."""

"""The small-scale UniME-V2 replication (``make replicate``): round 0, round 1, the ablation."""

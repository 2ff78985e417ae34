"""UniME-V2 hard-negative mining: embed, retrieve, judge, select (METHOD.md 1-3)."""

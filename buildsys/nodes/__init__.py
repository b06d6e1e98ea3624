"""The nodes that are not formats: the reference every check compares to, checks, and benchmarks."""

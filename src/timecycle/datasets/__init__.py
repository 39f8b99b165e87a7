"""Readers and writers of the benchmarks' own formats (DAVIS, JHMDB, VIP) and generated data."""

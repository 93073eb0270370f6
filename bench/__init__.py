"""Benchmarks and static kernel reports for ddsm_triton."""

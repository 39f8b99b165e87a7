"""Benchmark metrics, each equal to its benchmark's official evaluation code.

`timecycle.metrics.davis`: DAVIS-2017 semi-supervised J&F (region and boundary measures, their
per-object statistics and the official result tables).
"""

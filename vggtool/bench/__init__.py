"""Benchmark: every variant of a run measured under one set of conditions.

settings  BenchSettings (the measured defaults, and `quick()`)
timing    warm-up, batch and batch-1 blocks (pure, with an injectable clock), the Timer
stats     pooled medians, paired bootstrap intervals, how far a figure moved
rows      one flat row per variant
run       `bench`: score, then time, then summarise
env       CPU flags, versions, commit

Writing and rendering results is the report's job (`vggtool.report.publish`).
"""

"""Benchmarks: published anchors, the CPU leaderboard, reports."""

"""Parallel layouts: config, layout table, executors, planner."""

"""Structural facts of each block (parameters with roles, FLOPs, activation bytes), from the
config alone and without MindSpore: see base.py for the contract, model.py for the blocks a
config builds."""

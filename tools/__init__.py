"""Plain functions the planner acts with: train, sample, score. Imports nothing from planner."""

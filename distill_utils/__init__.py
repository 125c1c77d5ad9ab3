"""Data, trajectories, shortcut trajectories, losses, matching, EMA, metrics, evaluation."""

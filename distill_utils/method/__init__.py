"""The method's maths: the student, losses, similarity, the learnable synthetic set, EMA, matching, shortcut trajectories, expert training."""

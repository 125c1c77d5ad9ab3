"""File formats and run state: distilled subsets, expert buffers and their claims, the metrics log, pictures of a save."""

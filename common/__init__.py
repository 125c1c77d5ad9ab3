"""The bottom layer both networks/ and distill_utils/ may use: one-line user errors, atomic files, process identity."""

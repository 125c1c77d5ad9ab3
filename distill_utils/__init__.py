"""PTM-ST beyond the networks: method/ (the maths), data/, files/ (formats and run state), evaluation/, and the run-level modules (flags, phases, the distillation loop)."""

"""Flow-matching schedules, solvers, guidance and the denoise loop (plain PyTorch)."""

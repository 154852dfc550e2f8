"""PIE-Bench (PnP-Inversion's benchmark) for every editing method: reading the folder, the
metrics as the reference computes them, the runner, and a toy PIE-Bench with exact judges.

    attnprobe bench toy runs/toy_pie --model toy-v2 --per-type 5
    attnprobe bench run runs/toy_pie --out runs/bench --method fpe p2p --inversion ddim
"""

"""Replica folders of real Stable Diffusion checkpoints (configs as shipped, tiny weights)."""

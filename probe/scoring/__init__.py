"""Scores of what the toolkit draws: heat maps against exact masks (:mod:`.segmentation`)."""

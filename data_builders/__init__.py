"""What each stage trains on: synthetic families, filters, rejection sampling, the fusion mix, stage-4 task
kinds and preference pairs (the layer above rewards, below stages)."""

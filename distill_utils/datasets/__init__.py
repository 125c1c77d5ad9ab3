"""Datasets: the BLIP/Karpathy annotation layout, the built-in synthetic dataset, images, captions, cached text features, loading a run's data."""

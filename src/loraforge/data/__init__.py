"""Data: sources and captions, image checks and transforms, the training dataset."""

"""The toy world (`scene`: a captioned image generator) and its judge (`judge`: a classifier that reads a scene back from an image)."""

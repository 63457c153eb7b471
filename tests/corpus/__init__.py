"""The bad-input corpus of issue 11: every class of bad input, run through the real command line."""

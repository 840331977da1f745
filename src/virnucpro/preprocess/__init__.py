"""Turning input sequences into model inputs: chunking, six-frame translation, the frame table."""

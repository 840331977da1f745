"""Native packed implementations of the language models (ESM-2, DNABERT-S) and their checkpoint loaders."""

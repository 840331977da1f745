"""VirNucPro re-implemented on a packed, checkpointed embedding engine."""

__version__ = "0.1.0"

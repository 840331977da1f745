"""The VirNucPro MLP classifier, its safe loading, and prediction tables."""

"""User-facing errors: the CLI prints them as one line and exits with the code they carry."""

from __future__ import annotations


class VirNucProError(Exception):
    """An error caused by the user's input or environment, not by a bug: shown without a traceback."""

    exit_code = 2


class InputError(VirNucProError):
    """Bad input data (FASTA, tables, feature files)."""

    exit_code = 3


class ModelError(VirNucProError):
    """A model folder or checkpoint that cannot be used as asked."""

    exit_code = 4


class CheckpointError(VirNucProError):
    """A checkpoint directory that does not belong to this run."""

    exit_code = 5

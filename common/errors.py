"""Errors that speak to people: each message names the problem and the fix in one line."""


class HeuristError(Exception):
    """Base for errors caused by user input or the environment, shown as one line by the CLI."""


class TaskError(HeuristError):
    """An unknown or misdeclared task."""


class PolicyError(HeuristError):
    """A policy file that is missing, does not parse, or breaks the policy contract."""


class SplitGuardError(HeuristError):
    """A protected seed split (holdout, audit) was asked for without saying so explicitly."""


class LedgerError(HeuristError):
    """The ledger cannot be written."""


class OutputError(HeuristError):
    """A folder heurist was asked to write results into (clips, a report) cannot be used."""


class MemoryStoreError(HeuristError):
    """The memory store cannot be opened, is foreign or corrupt, or was embedded by another model."""


class EmbedderError(HeuristError):
    """The embedding model cannot be loaded or called."""

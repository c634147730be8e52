"""Errors the command line turns into one clear line (kept free of heavy imports)."""


class TrainingError(RuntimeError):
    """A run that cannot continue (a non-finite loss); the message says what was saved."""


class OracleError(RuntimeError):
    """An oracle that cannot answer (an endpoint down after its retries); what it answered is kept."""

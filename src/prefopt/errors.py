"""Errors the command line turns into one clear line (kept free of heavy imports)."""


class TrainingError(RuntimeError):
    """A run that cannot continue (a non-finite loss); the message says what was saved."""


class OracleError(RuntimeError):
    """An oracle that cannot answer (an endpoint down after its retries); what it answered is kept."""


class LabelError(ValueError):
    """A request the label store refuses: `field` names what is wrong, `status` is the HTTP answer."""

    def __init__(self, message: str, *, field: str | None = None, status: int = 422):
        super().__init__(message)
        self.field, self.status = field, status

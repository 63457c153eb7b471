class DataError(Exception):
    """The dataset cannot be used as configured; the message lists every problem with its path and the fix."""

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = problems or []
        super().__init__(message)

"""Errors a user can act on. run.py prints them as 'error: ... / fix: ...' instead of a traceback."""

from chareval.secrets import redact_text


class CharevalError(Exception):
    """A problem with a clear cause and fix; shown without a traceback."""

    def __init__(self, message: str, fix: str | None = None):
        # A server's error text can quote the key it was sent: no key survives into an error.
        message, fix = redact_text(message), redact_text(fix) if fix else fix
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return self.message if not self.fix else f"{self.message}\n  fix: {self.fix}"

    def one_line(self) -> str:
        """The message and its fix on one line: what an error record keeps."""
        return self.message if not self.fix else f"{self.message} (fix: {self.fix})"


class ConfigError(CharevalError):
    """The composed configuration is invalid."""


class InputError(CharevalError):
    """An input file or run is missing or malformed."""


class ModelError(CharevalError):
    """A model could not be loaded or called."""


class StructuredOutputError(ModelError):
    """A model's reply did not validate against the schema, even after one re-ask."""

    def __init__(self, message: str, raw_text: str):
        super().__init__(message)
        self.raw_text = redact_text(raw_text)

"""Errors a user can cause and fix. The CLI prints them as one line and exits non-zero."""


class PnlmError(Exception):
    """Base of every error that means bad input or a bad file, never a bug.

    The message is one line: the line breaks of a reason quoted from a library (pyarrow, zlib, json)
    become spaces, so the CLI's error is one line whatever the cause."""

    def __init__(self, message: object = "", *args: object) -> None:
        if isinstance(message, str) and ("\n" in message or "\r" in message):
            message = " ".join(part.strip() for part in message.splitlines() if part.strip())
        super().__init__(message, *args)


class SpecError(PnlmError):
    """A model spec (preset, TOML or config.json) that cannot describe a model."""


class CheckpointError(PnlmError):
    """A checkpoint folder that is missing, incomplete, corrupted or inconsistent."""


class TokenizerError(PnlmError):
    """A tokenizer that cannot be trained or loaded."""


class InputError(PnlmError):
    """A data file that cannot be read: names the file and, where there is one, the line."""


class BackendError(PnlmError):
    """A backend that is not installed or a device that is not there."""


class WriteError(PnlmError):
    """An output that cannot be written (disk full, no permission); what was there before is intact."""

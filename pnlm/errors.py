"""Errors a user can cause and fix. The CLI prints them as one line and exits non-zero."""


class PnlmError(Exception):
    """Base of every error that means bad input or a bad file, never a bug."""


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

"""User-facing errors: anything a user can cause is raised as VgenError and shown as one line."""


class VgenError(Exception):
    """An error the user can fix (bad flag, bad config, missing model, unwritable path, ...).

    The CLI prints ``error: <message>`` and exits non-zero, never a traceback.
    """


class ConfigError(VgenError):
    """A config key, type or value is wrong."""


class ModelLoadError(VgenError):
    """A model could not be found or loaded."""

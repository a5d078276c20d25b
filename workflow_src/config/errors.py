"""The one error type of bad params."""


class ConfigError(ValueError):
    """A params file is invalid; the message names the key and the value."""

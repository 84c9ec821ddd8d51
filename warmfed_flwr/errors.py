"""Project error types: each message names the key, path or client and what would fix it."""


class WarmFedError(Exception):
    """Base class for errors the apps report as one line."""


class RunStoppedError(Exception):
    """A project error already reported in one line; Flower records the run (or a client's reply) as failed.

    Deliberately not a WarmFedError (so it is never reported twice) and not a SystemExit, which Flower's
    ServerApp runtime does not catch: a run ended by SystemExit is recorded as ``finished:completed``.
    """


class ConfigError(WarmFedError):
    """A configuration key is unknown, mistyped or out of range."""


class FederationError(WarmFedError):
    """Too few clients answered with a valid upload for the run to go on."""


class DataError(WarmFedError):
    """A dataset path is missing, empty, unreadable or inconsistent."""


class PayloadError(WarmFedError):
    """A client upload or server message does not match its expected schema."""


class GeneratorError(WarmFedError):
    """A generator pipeline or adapter cannot be loaded, built or applied."""


class CheckpointError(WarmFedError):
    """A checkpoint to resume from is missing, unreadable or refers to a cache entry that is gone."""

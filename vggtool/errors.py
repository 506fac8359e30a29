"""The one exception type users see: the CLI prints it as a single line."""


class VggtoolError(Exception):
    """Bad input or an unusable file; the message is meant for the user."""


class Unavailable(VggtoolError):
    """A recipe this installation cannot build (a library the stack lacks): a named set goes on without it."""

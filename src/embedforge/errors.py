"""The one base class of every expected failure, so the CLI can end any of them with one clear line.

An expected failure is bad input, a failed check or an unusable endpoint: the user can fix it, and a
traceback would only hide the message. Each stage raises its own subclass (``DataFormatError``,
``ConfigError``, ``ExportError``, ...) whose message says what went wrong and where (file, line, field).
Anything else is a bug and keeps its traceback.
"""


class EmbedforgeError(Exception):
    """An expected failure: its message alone tells the user what and where; the CLI exits non-zero."""

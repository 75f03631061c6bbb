"""The one exception type for input data a user can fix."""


class DataError(ValueError):
    """Bad input data; the message says what is wrong, where, and what to do."""

"""The user's errors: one base class for everything a user can fix, and the data's own type.

It lives here, in datasets/ (the leftmost layer), so that models/ and search/ can subclass it
without importing from their right. UserError is deliberately not a ValueError: a ValueError
from a bug deep inside must not be reported as the user's bad input.
"""


class UserError(Exception):
    """Input a user can fix (data, flags, settings, files); CLIs print it in one line, exit 2."""


class DataError(UserError):
    """Bad input data; the message says what is wrong, where, and what to do."""

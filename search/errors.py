"""The exception type for study settings a user can fix."""

from datasets.errors import UserError


class StudyError(UserError):
    """Bad study input (definition, flags, storage); the message says what, where, what to do."""

"""The exception type for study settings a user can fix."""


class StudyError(ValueError):
    """Bad study input (definition, flags, storage); the message says what, where, what to do."""

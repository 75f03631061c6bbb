"""The search's exception types: study settings a user can fix, and a trial's two ways to stop.

The trial outcomes live here, not in search/objective.py, so the generic worker loop
(search/runner.py) can catch them without importing torch and W&B through the objective.
"""

from datasets.errors import UserError


class StudyError(UserError):
    """Bad study input (definition, flags, storage); the message says what, where, what to do."""


class TrialFailed(Exception):
    """A trial that cannot finish (e.g. out of GPU memory); the study goes on."""


class TrialInterrupted(Exception):
    """The user pressed Ctrl-C while this trial ran."""

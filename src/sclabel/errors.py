"""The one exception type for problems a user can fix.

The CLI prints these as one line and exits non-zero; anything else is a bug and keeps
its traceback.
"""


class InputError(ValueError):
    """Bad input (file, column, matrix, checkpoint) with a message that says how to fix it."""

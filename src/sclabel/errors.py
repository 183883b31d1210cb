"""The one exception type for problems a user can fix.

The CLI prints these as one line and exits non-zero; anything else is a bug and keeps
its traceback.
"""


class InputError(ValueError):
    """Bad input (file, column, matrix, checkpoint) with a message that says how to fix it."""


def listing(values, limit: int | None = None) -> str:
    """Values as a message shows them, `['A549', 'H1975', ...]`: numpy scalars become plain
    Python values (numpy 2 would print `np.str_('A549')`), cut after `limit` with '...'."""
    items = [str(v) if isinstance(v, str) else v.item() if hasattr(v, "item") else v
             for v in values]  # fmt: skip
    if limit is None or len(items) <= limit:
        return repr(items)
    return repr(items[:limit])[:-1] + ", ...]"

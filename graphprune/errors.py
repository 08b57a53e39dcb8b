"""What graphprune raises.

`GraphpruneError` is every expected failure: bad input, bad options, a model that cannot
be pruned safely. Its message is one line, and the command line prints it without a
traceback (exit 1). `InternalError` is a broken invariant of graphprune itself: a bug,
which the command line reports as such (with the traceback under --debug).
"""


class GraphpruneError(Exception):
    """A problem with the user's input or options, explained in one line."""


class InternalError(Exception):
    """An invariant of graphprune does not hold: a bug to report, not a user error."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

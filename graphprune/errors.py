"""The one exception type users see: every expected failure is a GraphpruneError with a
one-line message, which the CLI prints without a traceback."""


class GraphpruneError(Exception):
    """A problem with the user's input or options, explained in one line."""

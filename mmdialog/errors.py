"""One exception type for every user-facing failure: the CLI prints its message, not a traceback."""


class MMDialogError(Exception):
    """A problem with the user's input (file, record, config key, checkpoint) described in words."""

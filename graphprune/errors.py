"""User-facing errors: the CLI prints their message on one line and exits 2."""


class GraphpruneError(Exception):
    """Bad input or an impossible request; the message names the problem."""

"""The one exception type qsnn raises for bad input, and the checks most inputs share.

Every message is a single line that names the problem and how to fix it; the
command-line tool prints it as ``qsnn: error: <message>`` and exits with status 2.
"""

SEED_LIMIT = 2**63  # seeds are 0 .. 2^63 - 1 (torch's and the noise streams' range)


class QsnnError(Exception):
    """Bad input or a state qsnn cannot work with; the message says what to do."""


def integer_in(value, minimum: int, maximum: int | None = None) -> bool:
    """Whether ``value`` is an int (not a bool) from ``minimum`` to ``maximum`` (inclusive)."""
    return (
        isinstance(value, int) and not isinstance(value, bool)
        and value >= minimum and (maximum is None or value <= maximum)
    )


def check_seed(seed) -> int:
    if not integer_in(seed, 0, SEED_LIMIT - 1):
        raise QsnnError(f"seed must be an integer from 0 to 2^63 - 1, got {seed!r}")
    return seed

"""The one exception type qsnn raises for bad input.

Every message is a single line that names the problem and how to fix it; the
command-line tool prints it as ``qsnn: error: <message>`` and exits with status 2.
"""


class QsnnError(Exception):
    """Bad input or a state qsnn cannot work with; the message says what to do."""

"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class FernoiseError(Exception):
    """A user-facing error: one line saying what was expected, what was found, what to do.

    ``flag`` names the CLI option at fault (e.g. ``--rate``) when there is one; the CLI
    prefixes the message with it.
    """

    def __init__(self, message: str, *, flag: str | None = None):
        self.flag = flag
        super().__init__(message)

    def one_line(self) -> str:
        text = " ".join(str(self).split())
        if self.flag and not text.startswith(self.flag):
            text = f"{self.flag}: {text}"
        return text

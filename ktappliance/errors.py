"""The one exception type the CLI turns into a single line and a non-zero exit."""


class ApplianceError(Exception):
    """A problem the user can fix; its message is one line, shown as is."""

    exit_code = 2


class DockerError(ApplianceError):
    """The Docker engine or its CLI is missing, stopped or unusable."""

    exit_code = 3

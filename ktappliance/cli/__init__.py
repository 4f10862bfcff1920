"""The command layer: build.py's subcommands, each turning options into the steps' typed inputs."""

from ktappliance.cli.main import main

__all__ = ["main"]

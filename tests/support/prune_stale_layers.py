"""CI's own machine after a green run: drop the BuildKit layer records the run
did not use (earlier versions of the images it rebuilt), which otherwise pile
up run after run until a build or the native-bundle test finds the disk full.

Only records of type `regular` (layers) unused for longer than the run took;
the ccache, pip and apt cache mounts stay, so the next run's compiles still
hit. Not for a developer's machine: the prune is daemon-wide.
Usage: prune_stale_layers.py MINUTES"""

import sys

import docker


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit() or int(argv[0]) < 1:
        print("prune_stale_layers: usage: prune_stale_layers.py MINUTES (a whole number, at least 1)", file=sys.stderr)
        return 2
    client = docker.from_env(timeout=600)
    done = client.api.prune_builds(filters={"type": ["regular"], "until": f"{argv[0]}m"})
    print(f"prune_stale_layers: {done.get('SpaceReclaimed', 0) / 1e9:.1f} GB of build-cache layers "
          f"unused for {argv[0]} minutes removed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

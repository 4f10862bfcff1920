"""CI's own machine after a green run: when Docker's disk is getting full,
drop the BuildKit layer records the run did not use (earlier versions of the
images it rebuilt), which otherwise pile up run after run until a build or
the native-bundle test finds the disk full.

Only records of type `regular` (layers) unused for longer than the run took;
the ccache, pip and apt cache mounts stay. A run whose images were all cached
does not touch their builder stages either, so those go too, and the next
change to an engine's runtime recompiles its builder from ccache: hence only
below FREE_GB free. Not for a developer's machine: the prune is daemon-wide.
Usage: prune_stale_layers.py MINUTES FREE_GB"""

import shutil
import sys

import docker

USAGE = "prune_stale_layers: usage: prune_stale_layers.py MINUTES FREE_GB (whole numbers, at least 1)"


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not all(arg.isdigit() and int(arg) >= 1 for arg in argv):
        print(USAGE, file=sys.stderr)
        return 2
    minutes, free_gb = (int(arg) for arg in argv)
    client = docker.from_env(timeout=600)
    root = client.info()["DockerRootDir"]
    free = shutil.disk_usage(root).free / 1e9
    if free >= free_gb:
        print(f"prune_stale_layers: {free:.1f} GB free under {root}, at least {free_gb}: nothing pruned")
        return 0
    done = client.api.prune_builds(filters={"type": ["regular"], "until": f"{minutes}m"})
    print(f"prune_stale_layers: {free:.1f} GB free under {root}; {done.get('SpaceReclaimed', 0) / 1e9:.1f} GB "
          f"of build-cache layers unused for {minutes} minutes removed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

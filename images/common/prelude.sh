#!/bin/sh
# Sourced first by every build step under images/<image>/:
#   . "$(dirname "$0")/../common/prelude.sh"
# Every host lays the steps out the same way (/opt/ktappliance/<image>/ beside
# /opt/ktappliance/common/ in an image, images/ in a checkout, the AutoDL
# bundle, the GPU tier), so the shared helpers are always one folder up.
# shellcheck disable=SC2034  # the sourcing step reads $here and $common
here=$(cd "$(dirname "$0")" && pwd)
common=$(cd "$here/../common" && pwd)
# shellcheck source=network.sh
. "$common/network.sh"

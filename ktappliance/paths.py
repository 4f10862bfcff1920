"""Where the repository's templates and image scripts live."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = REPO_ROOT / "templates"
IMAGES_DIR = REPO_ROOT / "images"
COMPOSE_DIR = REPO_ROOT / "compose"

"""Where the suite's files are, worked out once: the package's own data (the config schema and
the variant matrix ship inside it), and the directory around the package, which is the checkout
(workflow/, results/) for an editable install and site-packages for a wheel."""
from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SCHEMA_PATH = PACKAGE_DIR / "schemas" / "config.schema.yaml"
VARIANTS_PATH = PACKAGE_DIR / "schemas" / "variants.yaml"
REPO_ROOT = PACKAGE_DIR.parent

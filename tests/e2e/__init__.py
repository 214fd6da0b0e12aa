"""End-to-end tests: the real server in a subprocess, driven by Debian's Chromium (Playwright)."""

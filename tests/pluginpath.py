"""A check plugin laid out as ``pip install --target DIR`` leaves it, for --plugin-path."""

from __future__ import annotations

from pathlib import Path

PLUGIN = """
from pilot.api import CheckOutcome, Status


class SiteVOCheck:
    name, required, timeout = "site-vo", False, None

    def run(self, ctx):
        return CheckOutcome(Status.PASSED, "from the plugin path", tags=("site-vo:yes",))
"""


def plugin_dir(tmp: Path) -> Path:
    """DIR holding the package ``site_vo_check`` and its dist-info with the entry point."""
    site = tmp / "vo-plugins"
    (site / "site_vo_check").mkdir(parents=True)
    (site / "site_vo_check" / "__init__.py").write_text(PLUGIN)
    info = site / "site_vo_check-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: site-vo-check\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[pilot.checks]\nsite-vo = site_vo_check:SiteVOCheck\n")
    return site

"""The demo's defaults, in a module light enough for `shadowtape demo --help` to import.

300 requests keep the whole demo well under a minute on two cores while giving every route
enough requests (and replay's noise sample enough pairs) for the diff to decide per route.
"""

from pathlib import Path

DEFAULT_WORKDIR = Path("demo-work")
DEFAULT_REQUESTS = 300
DEFAULT_SEED = 7

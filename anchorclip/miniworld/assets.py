"""Where the shipped miniworld models live (inside the installed package, see setup.py package_data)."""

import os

_ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
MINICLIP_PATH = os.path.join(_ASSETS, "miniclip")
MINICAPTIONER_PATH = os.path.join(_ASSETS, "minicaptioner")

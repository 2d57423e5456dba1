"""Where the shipped miniworld models live (inside the installed package, see setup.py package_data)."""

import os

_ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
#: The shipped mini-CLIP checkpoint pretrained on the miniature world (the default job's model).
MINICLIP_PATH = os.path.join(_ASSETS, "miniclip")
#: The shipped captioner of the miniature world (the default job's caption anchors).
MINICAPTIONER_PATH = os.path.join(_ASSETS, "minicaptioner")

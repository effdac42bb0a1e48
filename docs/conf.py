"""Sphinx configuration of the paw-lightning docs: ``make docs`` (or ``sphinx-build -W -n docs docs/_build/html``).

Offline: no intersphinx, so references to other projects' types (torch, Lightning, Gymnasium, ...) are not
resolved and are listed in ``nitpick_ignore_regex``; every reference to this project must resolve.
"""

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# autodoc imports the env modules; `import alfworld` would create $ALFWORLD_DATA, so give it a scratch folder
os.environ.setdefault("ALFWORLD_DATA", os.path.join(tempfile.gettempdir(), "paw-docs-alfworld-data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

project = "paw-lightning"
author = "the paw-lightning authors"
copyright = "the paw-lightning authors"
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
myst_heading_anchors = 3  # `page.md#a-heading` links resolve (and are checked) for headings down to ###
html_theme = "furo"
html_title = "paw-lightning"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_custom_sections = [("Returns", "params_style")]  # "(loss, clip_fraction): ..." names the parts, not a type
autodoc_inherit_docstrings = False  # overridden Lightning and Gymnasium hooks: their docs are theirs
# Types of other projects: without network there is no inventory to resolve them against.
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|lightning|L|nn|np|numpy|gym|gymnasium|transformers|peft|tqdm|matplotlib|argparse|jsonargparse|"
               r"collections|typing|pathlib|Path|Tensor|Callable|Sequence|Iterable|Iterator|Any|Literal|Generator|"
               r"os|random|contextlib|torchmetrics|ObsType|ActType)(\..*)?"),
    # the Literal choice types of the options: their values are listed in each option's doc line
    (r"py:class", r"(DType|LoraDType|Quantize|WMLoss|WorldModel|WMTarget|WMContext|WMNormalize|Advantage|NormMode|Actor|EngineName|"
                  r"LoraSync|SelectionEntropy|RoomSize)"),
]

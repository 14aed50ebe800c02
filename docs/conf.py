"""Sphinx configuration of the documentation site (``make docs``).

Why Sphinx with autodoc, MyST and furo (rather than mkdocs-material with mkdocstrings): the
docstrings are written in reST roles (``:class:``, ``:meth:``) with Google-style sections,
which autodoc and napoleon render as they are; autodoc imports the package, so names it
provides lazily (``AsyncChannel``) and inherited methods are documented exactly as Python sees
them; MyST lets the guides stay plain Markdown files that read well in a repository browser
and that the tests execute; and ``sphinx-build -W`` turns every broken cross-reference, bad
docstring markup or failed import into an error. furo is a maintained, readable theme with
light and dark modes and no JavaScript framework.
"""

from __future__ import annotations

from unix_socketpair import __version__  # `make docs` installs the package, editable

project = "unix-socketpair"
author = "the unix-socketpair authors"
copyright = "the unix-socketpair authors, MIT licence"
version = release = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "README.md"]

myst_heading_anchors = 3  # [text](page.md#a-heading) links, as in a repository browser
myst_enable_extensions = ["colon_fence"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"  # long signatures stay readable
autodoc_typehints_description_target = "documented"
autodoc_preserve_defaults = True
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # "Attributes:" of an exception as fields, not duplicate entries

html_theme = "furo"
html_title = f"unix-socketpair {__version__}"
html_static_path: list[str] = []

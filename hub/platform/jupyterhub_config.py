"""JupyterHub configuration of the platform (`jupyterhub -f` this file; `aif up` does).

The platform's defaults come first; the site's config file (the same file `aif up` reads) is
loaded last, so everything here can be overridden there.
"""

# `c` and `load_subconfig` are provided by JupyterHub when it executes this file.
from aifactory.hub.platform.hubconfig import configure_hub  # noqa: E402

configure_hub(c)  # noqa: F821

from aifactory.hub.platform.hubconfig import finish_hub, site_config_file  # noqa: E402

_site = site_config_file()
if _site:
    load_subconfig(_site)  # noqa: F821
finish_hub(c)  # noqa: F821

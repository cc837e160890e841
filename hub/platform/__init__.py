"""The launcher room: `aif up` / `aif status`, the platform's settings and the hub's configuration.

- config.py: the settings (`AIFPlatform`, `MLflowService`) and how the config file is read;
- example.py: `aif config generate`, the example config written from the traits' help;
- launcher.py: `Platform`, which starts, watches and stops proxy and hub on one state directory;
- hubconfig.py + jupyterhub_config.py: what the hub process is configured with (runtime.json);
- cli.py: `aif up`, `aif status`, `aif config`, `aif user`.
"""

from .config import ConfigError
from .launcher import Platform, PlatformError

__all__ = ["Platform", "PlatformError", "ConfigError"]

"""What runs inside a user's notebook server: widgets, magics, the session endpoint.

- `%load_ext aifactory.extensions` gives `%aif_session` and the `%%aif_bench` cell magic;
- `BenchmarkPanel`, `ComparePanel`, `SessionPanel`: ipywidgets panels (docs/extensions.md);
- the jupyter-server extension serves `/aif/session` and copies the example notebooks to
  `~/examples` on first start.
"""

__all__ = ["BenchmarkPanel", "ComparePanel", "SessionPanel", "session_info"]


def _jupyter_server_extension_points():
    return [{"module": "aifactory.extensions"}]


def _load_jupyter_server_extension(serverapp):
    from .server import load

    load(serverapp)


def load_ipython_extension(ipython):
    from .magics import AIFMagics

    ipython.register_magics(AIFMagics)


def __getattr__(name):
    if name in ("BenchmarkPanel", "ComparePanel", "SessionPanel"):
        from . import panels

        return getattr(panels, name)
    if name == "session_info":
        from .session import session_info

        return session_info
    raise AttributeError(name)

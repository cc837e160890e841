"""`python -m aifactory.common.guarded MODULE [ARGS...]`: run MODULE as `python -m MODULE ARGS` would,
after arming the death-of-parent guard and recording this process (procutil.guard_this_process).

The hub starts every managed service this way (hubconfig.py). A service module's own imports
take seconds on a loaded machine (MLflow's, tornado's); a guard armed after them missed a hub
that died meanwhile, and the service, in its own session, outlived the platform. Here the guard
is armed before anything of the service is imported; this module imports nothing heavy.
"""

import os
import runpy
import sys

from .procutil import guard_this_process


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: python -m aifactory.common.guarded MODULE [ARGS...]")
    module = sys.argv[1]
    guard_this_process(os.environ.get("JUPYTERHUB_SERVICE_NAME") or module)
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()

import os
import sys

from core.threads import is_torchrun_worker, share_the_cores

if is_torchrun_worker():
    share_the_cores()

from core.cli import main  # noqa: E402  (after the thread count is settled)

code = main()
if is_torchrun_worker():
    # The process group is already torn down; letting the interpreter run its C++ destructors can
    # abort (SIGABRT from gloo's threads) and hide the exit code from torchrun's report.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)

import os
import sys

from core.cli import main


def is_torchrun_worker() -> bool:
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


code = main()
if is_torchrun_worker():
    # The process group is already torn down; letting the interpreter run its C++ destructors can
    # abort (SIGABRT from gloo's threads) and hide the exit code from torchrun's report.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)

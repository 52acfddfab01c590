import os
import sys

from mer.cli import main


def _exit_now(rc: int) -> None:
    """Under torchrun: leave without running C++ static destructors. A finished rank sometimes aborted at
    interpreter exit ("terminate called without an active exception": a joinable std::thread of the c10d
    runtime destroyed during shutdown, SIGABRT after every file was written), which torchrun reports as a
    failed job. Everything is written and the process group destroyed by now; flush and exit."""
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def run() -> None:
    """``python -m mer`` and the ``mer`` console script (setup.py): main(), then the exit above under torchrun."""
    rc = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _exit_now(int(rc or 0))
    raise SystemExit(rc)


if __name__ == "__main__":
    run()

"""A stand-in worker for the lifeline test: holds the platform's lifeline, says so, then waits forever
(only the lifeline or a signal ends it)."""

import threading

from embedforge.platform.jobs.lifeline import hold

if __name__ == "__main__":
    hold()
    print("holding", flush=True)
    threading.Event().wait()

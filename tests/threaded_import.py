"""A module that starts a thread when imported, as some simulator plug-ins do (tests/test_forkserver.py)."""

import threading

threading.Thread(target=threading.Event().wait, daemon=True, name="started-at-import").start()

"""The DynamoDB emulator (moto) for the tests, one request at a time.

DynamoDB applies each conditional write atomically. moto's threaded server
does not: it reads the item, evaluates the condition and writes in separate
steps, so two concurrent conditional puts can both succeed. Serializing the
requests restores the guarantee the DynamoDB backend relies on, while
connections are still accepted concurrently.

    python3 tests/moto_serial.py HOST PORT
"""

import signal
import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serialized(environ, start_response):
        with lock:
            # The whole response is produced under the lock.
            return list(app(environ, start_response))

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run_simple(host, port, serialized, threaded=True)


if __name__ == "__main__":
    main()

"""The first program in a browser's jail: hands two sockets out of its network namespace.

Run by bubblewrap inside the new namespaces (standard library only, `python3 -I -S`), as
`jail_init.py CONTROL_FD EXECUTABLE ARGS...`. Sockets belong to the network namespace they
were created in, whoever holds them later, so it makes, on the namespace's own loopback:

* the proxy listener Chromium is told to use (the pool accepts on it and dials out from the
  host's namespace: the only way out), and
* an unconnected socket the pool later connects to Chromium's DevTools port,

sends both to the pool over CONTROL_FD (SCM_RIGHTS), then becomes Chromium.
"""

import os
import socket
import sys


def main() -> None:
    control = socket.socket(fileno=int(sys.argv[1]))
    proxy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    proxy.bind(("127.0.0.1", 0))
    proxy.listen(128)
    devtools = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    socket.send_fds(control, [b"sockets"], [proxy.fileno(), devtools.fileno()])
    port = proxy.getsockname()[1]
    for sock in (control, proxy, devtools):
        sock.close()
    argv = [*sys.argv[2:], f"--proxy-server=socks5://127.0.0.1:{port}"]
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()

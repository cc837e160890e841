"""Loopback ports: the platform, its services, the mini-cluster and the tests all pick them here."""

import socket


def free_port(ip="127.0.0.1"):
    """A port nobody listens on right now (the OS picks it; the caller binds it soon after)."""
    with socket.socket() as sock:
        sock.bind((ip, 0))
        return sock.getsockname()[1]


def port_is_free(port, ip="127.0.0.1"):
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((ip, port))
        except OSError:
            return False
    return True


def port_open(port, host="127.0.0.1", timeout=0.5):
    """Something accepts connections on host:port."""
    with socket.socket() as sock:
        sock.settimeout(timeout)
        return sock.connect_ex((host, port)) == 0

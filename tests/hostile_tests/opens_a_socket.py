import socket


def test_calls_home():
    socket.create_connection(("127.0.0.1", int("{port}")), timeout=2).close()
